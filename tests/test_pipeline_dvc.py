"""`dvc repro` end to end on a tiny copy of the project: caching and per-λ reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> str:
    """Run a command with the project's environment on PATH; its stdout."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def status(project: Path) -> set[str]:
    """The stages `dvc status` finds out of date."""
    return set(json.loads(run(["dvc", "status", "--json"], project)))


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if (REPO / f).is_file()]


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sample"].update(train_images=4, val_images=3)
    params["masks"].update(images_per_shard=2, n_workers=1)
    params["train"].update(steps=2, batch_size=2, patch_size=64, model_args={"N": 8, "M": 8})
    params["codecs"] = [
        "mse-0.01",
        "mse-0.02",
        "mse-0.04",
        "object-0.05",
        "object-0.1",
        "object-0.2",
    ]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    output = run(["dvc", "repro"], root)
    assert "report" in ran_stages(output)
    return root


def test_repro_builds_the_report(project):
    report = project / "results" / "report"
    for name in ("rd.csv", "rd.md", "bd_rate.json", "psnr_bpp.png", "object_psnr_bpp.png"):
        assert (report / name).is_file(), name
    rows = (report / "rd.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    bd = json.loads((report / "bd_rate.json").read_text())
    assert {b["quality"] for b in bd} == {"psnr", "object_psnr", "ms_ssim"}
    for dataset, format in (
        ("sample", "coco"),
        ("sample-visdrone", "visdrone"),
        ("sample-cityscapes", "cityscapes"),
        ("sample-yolo", "yolo"),
    ):  # the demo runs every reader
        report = json.loads((project / "data" / "prepared" / dataset / "report.json").read_text())
        assert report["format"] == format and report["splits"]["val"]["images"] == 3
        assert (
            project / "data" / "masks" / dataset / "object" / "val.zarr" / "zarr.json"
        ).is_file()
    provenance = json.loads((project / "models" / "object-0.1" / "provenance.json").read_text())
    assert provenance["params"]["codec"] == "object-0.1" and provenance["packages"]["compressai"]


def test_second_repro_runs_nothing(project):
    assert status(project) == set()
    assert ran_stages(run(["dvc", "repro"], project)) == set()


def test_changing_one_lambda_reruns_only_its_chain_and_the_report(project):
    params_path = project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["codecs"][params["codecs"].index("object-0.1")] = "object-0.15"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    expected = {"train@object-0.15", "encode@object-0.15", "evaluate@object-0.15", "report"}
    assert status(project) == expected
    assert ran_stages(run(["dvc", "repro"], project)) == expected
    table = (project / "results" / "report" / "rd.csv").read_text()
    assert "object-0.15" in table and "object-0.1," not in table


def test_edges_stages_exist_only_for_the_datasets_listed(tmp_path):
    for name in project_files():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    run(["git", "init", "-q"], tmp_path)
    listed = run(["dvc", "stage", "list", "--names-only"], tmp_path).split()
    assert not [s for s in listed if s.startswith("edges@")] and "masks@sample" in listed
    params_path = tmp_path / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["edges"]["datasets"] = ["sample"]
    params["sam"]["checkpoint"] = "models/sam/sam_vit_b_01ec64.pth"
    params["codecs"].append("edge-0.01")
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    listed = run(["dvc", "stage", "list", "--names-only"], tmp_path).split()
    assert {"edges@sample", "train@edge-0.01", "evaluate@edge-0.01"} <= set(listed)
    upstream = run(["dvc", "dag", "--outs", "train@edge-0.01"], tmp_path)
    assert "data/masks/sample/edge" in upstream
