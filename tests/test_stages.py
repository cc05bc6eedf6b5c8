"""Stages through the CLI on broken inputs: a clear message, or a logged skip; no partial output."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from tests.helpers.project import REPO

runner = CliRunner()


@pytest.fixture
def project(tmp_path, monkeypatch, sample_root):
    """A working directory with a copy of the sample dataset and params pointing at it."""
    shutil.copytree(sample_root, tmp_path / "coco")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["sample"]["root"] = str(tmp_path / "coco")
    params["masks"].update(n_workers=1, images_per_shard=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def set_on_error(project, policy: str) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prepare"]["on_error"] = policy
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def break_polygon(project) -> int:
    path = project / "coco" / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    index = next(
        i for i, a in enumerate(coco["annotations"]) if isinstance(a["segmentation"], list)
    )
    coco["annotations"][index]["segmentation"][0][0] = -300.0
    path.write_text(json.dumps(coco))
    return index


def test_bad_inputs_stop_prepare_with_file_and_entry_and_no_output(project):
    path = project / "coco" / "annotations" / "instances_val.json"
    index = break_polygon(project)
    result = runner.invoke(app, ["prepare", "sample"])
    assert result.exit_code == 1
    assert str(path) in result.output and f"annotations[{index}]" in result.output
    assert not Paths().prepared("sample").exists()
    path.write_text(path.read_text()[:-40])  # truncated
    result = runner.invoke(app, ["prepare", "sample"])
    assert result.exit_code == 1 and "invalid JSON" in result.output
    assert not Paths().prepared("sample").exists()


def test_skip_policy_logs_skips_and_the_pipeline_goes_on(project):
    index = break_polygon(project)
    coco = json.loads((project / "coco" / "annotations" / "instances_val.json").read_text())
    broken_image = coco["annotations"][index]["image_id"]
    missing = next(i for i, im in enumerate(coco["images"]) if im["id"] != broken_image)
    (project / "coco" / "val" / coco["images"][missing]["file_name"]).unlink()
    set_on_error(project, "skip")
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    report = json.loads((Paths().prepared("sample") / "report.json").read_text())
    entries = {s["entry"].split(" ")[0] for s in report["skipped"]}
    assert entries == {f"annotations[{index}]", f"images[{missing}]"}
    result = runner.invoke(app, ["masks", "sample"])
    assert result.exit_code == 0, result.output
    store = Paths().mask_store("object", "sample", "val")
    assert (store / "zarr.json").is_file()
    assert json.loads((store / "zarr.json").read_text())["attributes"]["icmflow"]["complete"]
    assert not (project / "data" / ".work" / "masks" / "sample").exists()


def test_training_twice_gives_the_same_codec(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(steps=3, batch_size=2, patch_size=64)
    params["codecs"]["meanscale-base"]["model_args"] = {"N": 8, "M": 8}
    params["codecs"]["meanscale-base"].pop("train", None)  # the shared settings above
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    runs = []
    for _ in range(2):
        torch.rand(10)  # whatever drew from torch's generator before must not matter
        result = runner.invoke(app, ["train", "meanscale-base"])
        assert result.exit_code == 0, result.output
        checkpoint = torch.load(Paths().checkpoint("meanscale-base"), weights_only=False)
        runs.append((Paths().train_log("meanscale-base").read_text(), checkpoint["state_dict"]))
        shutil.rmtree(Paths().model("meanscale-base"))
    (log_a, weights_a), (log_b, weights_b) = runs
    assert log_a == log_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
