"""Task models through the stage commands: task -> infer -> finetune -> report on the sample,
with a tiny YOLO trained inside the test; and what bad task inputs give the user."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from tests.helpers.params import edit_params
from tests.helpers.project import REPO

runner = CliRunner()
TASK = "yolo-shapes"


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def project(tmp_path_factory, sample_root):
    """The sample prepared and coded by two JPEG entries (train and val), a YOLO trained on its
    original train split for two epochs at 64 px, inferred on every source, fine-tuned on one."""
    root = tmp_path_factory.mktemp("tasks")
    shutil.copytree(sample_root, root / "coco")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {"sample": {**params["datasets"]["sample"], "root": str(root / "coco")}}
    params["masks"].update(n_workers=1, images_per_shard=8)
    params["encode"].update(n_workers=1)
    params["codecs"] = {
        f"{family}-q{q}": {"family": family, "quality": q}
        for family in ("jpeg", "webp")
        for q in (10, 25, 50)
    }
    params["report"]["anchors"] = ["jpeg"]
    params["tasks"][TASK].update(input_size=64)
    params["tasks"][TASK]["train"].update(epochs=2)
    params["tasks"][TASK]["finetune"] = {"codecs": ["jpeg-q25"], "epochs": 1, "batch_size": 8}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        invoke("prepare", "sample")
        invoke("masks", "sample")
        for codec in params["codecs"]:
            invoke("encode", codec)
            invoke("evaluate", codec)
        invoke("task", TASK)
        for source in ("original", *params["codecs"]):
            invoke("infer", source, TASK)
        invoke("finetune", "jpeg-q25", TASK)
        invoke("report")
        yield root


def test_infer_scores_every_source_with_cocoeval(project):
    paths = Paths(project)
    for source in ("original", "jpeg-q10", "jpeg-q25", "webp-q50"):
        out = paths.predictions(source, TASK)
        accuracy = json.loads((out / "accuracy.json").read_text())
        assert 0 <= accuracy["bbox"]["map"] <= accuracy["bbox"]["map50"] <= 1
        assert set(accuracy["bbox"]["per_class"]) == {"disc", "star", "box"}
        results = json.loads((out / "predictions.json").read_text())
        assert results and {r["category_id"] for r in results} <= {1, 2, 3}  # the sample's ids
        assert (out / "provenance.json").is_file()


def test_finetune_trains_on_the_coded_train_split_and_scores_its_val(project):
    paths = Paths(project)
    tuned = paths.finetuned_weights("jpeg-q25", TASK)
    assert tuned.is_file() and tuned.read_bytes() != paths.task_weights(TASK).read_bytes()
    accuracy = json.loads((paths.finetuned("jpeg-q25", TASK) / "accuracy.json").read_text())
    assert accuracy["source"] == "jpeg-q25" and 0 <= accuracy["bbox"]["map"] <= 1
    coded = paths.coded("jpeg-q25")
    train = json.loads(paths.prepared_split("sample", "train").read_text())["images"]
    assert len(list((coded / "images" / "train").iterdir())) == len(train)  # encode.train_split
    assert not (paths.coded("jpeg-q10") / "images" / "train").exists()  # not fine-tuned on
    assert not list(coded.rglob("*.cache"))  # ultralytics wrote nothing into the dataset


def test_report_has_accuracy_against_bpp_with_the_uncompressed_reference(project):
    report = Paths(project).report
    with (report / f"accuracy_{TASK}.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert next(r["codec"] for r in rows if r["model"] == "pre-trained") == "original"
    assert {r["codec"] for r in rows if r["model"] == "fine-tuned"} == {"jpeg-q25"}
    assert len([r for r in rows if r["model"] == "pre-trained"]) == 7
    assert (report / f"accuracy_{TASK}_bbox_map.png").stat().st_size > 10_000
    bd = json.loads((report / "accuracy_bd_rate.json").read_text())
    assert {(b["test"], b["anchor"], b["model"], b["quality"]) for b in bd} == {
        ("webp", "jpeg", "pre-trained", "bbox_map"),
        ("webp", "jpeg", "pre-trained", "bbox_map50"),
    }  # fine-tuned: one point, no curve
    assert "## yolo-shapes" in (report / "accuracy.md").read_text()


def test_missing_weights_and_unmapped_classes_fail_before_any_image(project, monkeypatch):
    monkeypatch.chdir(project)
    saved = (project / "params.yaml").read_text()
    try:
        edit_params(Path(), lambda p: p["tasks"][TASK].update(weights="models/nope.pt", train=None))
        result = runner.invoke(app, ["infer", "original", TASK])
        assert result.exit_code == 1
        assert "models/nope.pt" in result.output and "never downloads" in result.output
        (project / "params.yaml").write_text(saved)
        edit_params(Path(), lambda p: p["tasks"][TASK].update(classes={1: 0, 2: 1}))
        result = runner.invoke(app, ["infer", "original", TASK])
        assert result.exit_code == 1 and "box" in result.output and "classes" in result.output
    finally:
        (project / "params.yaml").write_text(saved)


def test_a_corrupted_coded_image_is_named(project, monkeypatch):
    monkeypatch.chdir(project)
    image = sorted((project / "data/coded/jpeg-q10/images/val").iterdir())[0]
    saved = image.read_bytes()
    try:
        image.write_bytes(saved[: len(saved) // 2])
        result = runner.invoke(app, ["infer", "jpeg-q10", TASK])
        assert result.exit_code == 1
        assert image.name in result.output and "cannot be decoded" in result.output
    finally:
        image.write_bytes(saved)


def test_a_torchvision_rcnn_with_random_weights_infers_on_a_coded_split(project, monkeypatch):
    """Shape and format of the predictions (random weights: no accuracy to speak of)."""
    import torch
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    monkeypatch.chdir(project)
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=4)
    torch.save(model.state_dict(), project / "rcnn.pth")
    saved = (project / "params.yaml").read_text()
    rcnn = {
        "kind": "detection",
        "backend": "torchvision",
        "weights": "rcnn.pth",
        "input_size": 128,
        "classes": {1: 1, 2: 2, 3: 3},
        "options": {"arch": "fasterrcnn_mobilenet_v3_large_fpn", "num_classes": 4},
    }
    try:
        edit_params(Path(), lambda p: p["tasks"].update(rcnn=rcnn))
        invoke("infer", "jpeg-q25", "rcnn")
    finally:
        (project / "params.yaml").write_text(saved)
    out = Paths(project).predictions("jpeg-q25", "rcnn")
    results = json.loads((out / "predictions.json").read_text())
    coded = json.loads((project / "data/coded/jpeg-q25/annotations/val.json").read_text())
    sizes = {image["id"]: (image["width"], image["height"]) for image in coded["images"]}
    for result in results:
        x, y, w, h = result["bbox"]
        width, height = sizes[result["image_id"]]
        assert result["category_id"] in {1, 2, 3} and 0 <= result["score"] <= 1
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= width + 0.01
        assert y + h <= height + 0.01
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert set(accuracy) == {"source", "task", "bbox"} and accuracy["bbox"]["images"] == len(sizes)
