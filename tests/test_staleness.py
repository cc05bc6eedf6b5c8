"""Stages run by hand refuse inputs made from an older upstream (icmflow.pipeline.freshness):
after retraining, evaluate and report stop naming `icmflow encode`; after re-encoding, the
report names `icmflow evaluate`; after preparing again, the masks and coded datasets name theirs.
"""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from tests.helpers.params import edit_params, learned_entry, sample_params

runner = CliRunner()


@pytest.fixture
def project(tmp_path, monkeypatch, sample_root):
    """The sample, one tiny learned codec and one JPEG codec, run from prepare to report."""
    codecs = {"object-1": learned_entry("object"), "jpeg-q25": {"family": "jpeg", "quality": 25}}
    params = sample_params(tmp_path, sample_root, codecs)
    params["train"].update(steps=2, batch_size=2, patch_size=64, lr_milestones=[])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    for command in (
        ["prepare", "sample"],
        ["masks", "sample"],
        ["train", "object-1"],
        *(["encode", codec] for codec in params["codecs"]),
        *(["evaluate", codec] for codec in params["codecs"]),
        ["report"],
    ):
        ok(command)
    return tmp_path


def ok(command: list[str]) -> None:
    result = runner.invoke(app, command)
    assert result.exit_code == 0, (command, result.output)


def refused(command: list[str], made: str, older: str, rerun: str) -> None:
    result = runner.invoke(app, command)
    assert result.exit_code == 1, (command, result.output)
    assert f"{made} was made from an older {older}: rerun `{rerun}`" in result.output


def test_outputs_record_the_command_and_the_digests_of_what_they_were_made_from(project):
    record = json.loads((Paths().coded("object-1") / "provenance.json").read_text())
    assert record["command"] == "icmflow encode object-1"
    assert set(record["inputs"]) == {
        "data/prepared/sample/val.json",
        "models/object-1/checkpoint.pth.tar",
    }
    metrics = json.loads((Paths().metrics("object-1") / "provenance.json").read_text())
    assert set(metrics["inputs"]) == {
        "data/coded/object-1/bpp/val.csv",
        "data/prepared/sample/val.json",
        "data/masks/sample/object/val.zarr",
    }
    report = json.loads((Paths().report / "provenance.json").read_text())
    assert set(report["inputs"]) == {
        f"results/metrics/{c}/metrics.json" for c in ("object-1", "jpeg-q25")
    }


def test_after_retraining_evaluate_and_report_name_the_encode_to_rerun(project):
    edit_params(project, lambda p: p["train"].update(seed=1))
    ok(["train", "object-1"])
    coded, checkpoint = "data/coded/object-1", "models/object-1/checkpoint.pth.tar"
    refused(["evaluate", "object-1"], coded, checkpoint, "icmflow encode object-1")
    refused(["report"], coded, checkpoint, "icmflow encode object-1")
    ok(["evaluate", "jpeg-q25"])  # the other codec's chain is current
    ok(["encode", "object-1"])
    refused(
        ["report"], "results/metrics/object-1", f"{coded}/bpp/val.csv", "icmflow evaluate object-1"
    )
    ok(["evaluate", "object-1"])
    ok(["report"])


def test_a_checkpoint_replaced_by_hand_is_found(project):
    checkpoint = Paths().checkpoint("object-1")
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")  # another file in its place
    refused(
        ["evaluate", "object-1"], "data/coded/object-1", str(checkpoint), "icmflow encode object-1"
    )


def test_preparing_again_makes_the_masks_and_coded_datasets_stale(project):
    annotations = project / "coco" / "annotations" / "instances_val.json"
    coco = json.loads(annotations.read_text())
    dropped = coco["images"][0]["id"]  # one image fewer
    coco["images"] = coco["images"][1:]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != dropped]
    annotations.write_text(json.dumps(coco))
    ok(["prepare", "sample"])
    prepared = "data/prepared/sample/val.json"
    refused(["evaluate", "jpeg-q25"], "data/coded/jpeg-q25", prepared, "icmflow encode jpeg-q25")
    ok(["encode", "jpeg-q25"])
    refused(["evaluate", "jpeg-q25"], "data/masks/sample/object", prepared, "icmflow masks sample")
    ok(["masks", "sample"])
    ok(["evaluate", "jpeg-q25"])


def test_the_first_stage_to_rerun_is_named_however_far_up_the_change_is(project):
    """A new training split: the masks come before the codec trained on them."""
    annotations = project / "coco" / "annotations" / "instances_train.json"
    coco = json.loads(annotations.read_text())
    coco["info"] = {"description": "edited"}
    annotations.write_text(json.dumps(coco))
    ok(["prepare", "sample"])
    train = "data/prepared/sample/train.json"
    refused(["encode", "object-1"], "data/masks/sample/object", train, "icmflow masks sample")
    ok(["masks", "sample"])
    refused(["encode", "object-1"], "models/object-1", train, "icmflow train object-1")
    ok(["encode", "jpeg-q25"])  # a classical codec reads the val split only
