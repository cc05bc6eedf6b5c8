"""`icmflow pipeline` + `dvc repro` end to end on a tiny copy of the project: caching, reruns of
exactly what an edit touches, and a stale dvc.yaml stopped before it runs anything."""

from __future__ import annotations

import json

import pytest

from icmflow.coding.bitstream import unpack
from icmflow.coding.roi import unpack_roi
from tests.helpers.dvc import copy_project, ran_stages, resolved_stages, run, status
from tests.helpers.params import edit_params, learned_entry

pytestmark = pytest.mark.slow

LEARNED = {"mse-1": learned_entry("mse", 0.01), "object-1": learned_entry("object", 0.1)}
CLASSICAL = {f"jpeg-q{q}": {"family": "jpeg", "quality": q} for q in (10, 40)}
ROI = {"roi-mse-1": {"family": "roi", "codec": "mse-1", "qf": 1.4}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("project"))

    def tiny(params):
        params["sample"].update(train_images=4, val_images=3)
        params["datasets"] = {"sample": params["datasets"]["sample"]}  # the demo runs the others
        params["masks"].update(images_per_shard=2, n_workers=1)
        params["train"].update(steps=2, batch_size=2, patch_size=64)
        params["codecs"] = {**LEARNED, **CLASSICAL, **ROI}
        params["tasks"] = {}  # tests/test_task_stages.py runs them
        params["report"]["anchors"] = ["jpeg", "bmshj2018-hyperprior-mse"]

    edit_params(root, tiny)
    run(["icmflow", "pipeline"], root)
    assert "report" in ran_stages(run(["dvc", "repro"], root).stdout)
    return root


def test_repro_builds_the_report(project):
    report = project / "results" / "report"
    for name in ("rd.csv", "rd.md", "bd_rate.json", "psnr_bpp.png", "object_psnr_bpp.png"):
        assert (report / name).is_file(), name
    rows = (report / "rd.csv").read_text().splitlines()
    assert len(rows) == 1 + len(LEARNED) + len(CLASSICAL) + len(ROI)
    bd = json.loads((report / "bd_rate.json").read_text())
    assert {b["quality"] for b in bd} == {"psnr", "object_psnr", "ms_ssim"}
    assert {b["anchor"] for b in bd} == {"jpeg", "bmshj2018-hyperprior-mse"}
    prepared = json.loads((project / "data/prepared/sample/report.json").read_text())
    assert prepared["format"] == "coco" and prepared["splits"]["val"]["images"] == 3
    assert (project / "data/masks/sample/object/val.zarr/zarr.json").is_file()
    provenance = json.loads((project / "models" / "object-1" / "provenance.json").read_text())
    assert provenance["params"]["codec"]["object-1"]["lmbda"] == 0.1
    assert provenance["packages"]["compressai"]
    assert not (project / "models" / "jpeg-q10").exists()  # classical codecs are not trained
    assert (
        sorted(p.suffix for p in (project / "data/coded/jpeg-q10/bitstreams/val").iterdir())
        == [".jpg"] * 3
    )


def test_the_roi_baseline_codes_with_its_codecs_checkpoint_and_the_object_masks(
    project, monkeypatch
):
    monkeypatch.chdir(project)  # DVC names stages relative to the working directory
    stages = resolved_stages(project)
    assert "train@roi-mse-1" not in stages
    assert {"models/mse-1/checkpoint.pth.tar", "data/masks/sample/object"} <= set(
        stages["encode@roi-mse-1"][1]
    )
    coded = project / "data/coded/roi-mse-1"
    files = sorted((coded / "bitstreams" / "val").iterdir())
    assert len(files) == 3
    for path in files:
        roi = unpack_roi(unpack(path.read_bytes()).strings[0])  # the ROI map, in the file
        assert roi.ndim == 2
    summary = json.loads((coded / "summary.json").read_text())["val"]
    assert summary["total_bits"] == 8 * sum(f.stat().st_size for f in files)
    metrics = json.loads((project / "results/metrics/roi-mse-1/metrics.json").read_text())
    assert metrics["bpp"] == pytest.approx(summary["bpp"])


def test_second_repro_runs_nothing(project):
    assert status(project) == set()
    assert ran_stages(run(["dvc", "repro"], project).stdout) == set()


def test_editing_one_entry_reruns_exactly_its_chain_and_the_report(project):
    """`dvc status` names the stages whose own inputs changed; repro runs those and what
    their new outputs feed."""
    edit_params(project, lambda p: p["codecs"]["object-1"].update(lmbda=0.15))
    assert status(project) == {"pipeline", "train@object-1", "report"}
    assert ran_stages(run(["dvc", "repro"], project).stdout) == {
        "pipeline",
        "train@object-1",
        "encode@object-1",
        "evaluate@object-1",
        "report",
    }
    edit_params(project, lambda p: p["codecs"]["jpeg-q40"].update(quality=45))
    assert status(project) == {"pipeline", "encode@jpeg-q40", "report"}
    assert ran_stages(run(["dvc", "repro"], project).stdout) == {
        "pipeline",
        "encode@jpeg-q40",
        "evaluate@jpeg-q40",
        "report",
    }
    table = (project / "results" / "report" / "rd.csv").read_text()
    assert "λ=0.15" in table and "q=45" in table


def test_a_stale_dvc_yaml_stops_repro_with_the_fix(project):
    edit_params(
        project, lambda p: p["codecs"].update({"jpeg-q60": {"family": "jpeg", "quality": 60}})
    )
    result = run(["dvc", "repro"], project, check=False)
    assert result.returncode != 0
    assert "does not match" in result.stderr + result.stdout
    assert "run `icmflow pipeline`" in result.stderr + result.stdout
    run(["icmflow", "pipeline"], project)
    assert ran_stages(run(["dvc", "repro"], project).stdout) == {
        "pipeline",
        "encode@jpeg-q60",
        "evaluate@jpeg-q60",
        "report",
    }


def test_editing_code_reruns_the_stages_that_import_it(project):
    images = project / "icmflow" / "datasets" / "images.py"
    images.write_text(images.read_text() + "# a comment\n")
    out_of_date = status(project)
    assert {f"train@{name}" for name in LEARNED} <= out_of_date
    assert {f"evaluate@{name}" for name in CLASSICAL} <= out_of_date
    closure = project / "icmflow" / "evaluation" / "bdrate.py"
    closure.write_text(closure.read_text() + "# a comment\n")
    images.write_text(images.read_text().removesuffix("# a comment\n"))
    assert status(project) == {"pipeline", "report"}  # bdrate.py: the report's code only


def test_edges_stages_exist_only_for_the_datasets_listed(tmp_path):
    root = copy_project(tmp_path)
    listed = run(["dvc", "stage", "list", "--names-only"], root).stdout.split()
    assert not [s for s in listed if s.startswith("edges@")] and "masks@sample" in listed

    def edges(params):
        params["edges"]["datasets"] = ["sample"]
        params["sam"]["checkpoint"] = "models/sam/sam_vit_b_01ec64.pth"
        params["codecs"]["edge-1"] = learned_entry("edge")

    edit_params(root, edges)
    run(["icmflow", "pipeline"], root)
    listed = run(["dvc", "stage", "list", "--names-only"], root).stdout.split()
    assert {"edges@sample", "train@edge-1", "evaluate@edge-1"} <= set(listed)
    upstream = run(["dvc", "dag", "--outs", "train@edge-1"], root).stdout
    assert "data/masks/sample/edge" in upstream
