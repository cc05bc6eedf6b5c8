"""Cityscapes' 19 classes: train ids from the gtFine labelIds, and mIoU that agrees with
Cityscapes' own `evalPixelLevelSemanticLabeling` on the shared frame and the generated sample."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from icmflow.core.errors import InputError, MissingInputError
from icmflow.datasets.formats.cityscapes import (
    IMAGE_SUFFIX,
    TRAIN_CATEGORIES,
    TRAIN_CLASSES,
    label_ids,
    to_label_ids,
    to_train_ids,
)
from icmflow.tasks.accuracy import score_predictions
from icmflow.tasks.classes import class_mapping
from icmflow.tasks.predictions import label_png_path
from icmflow.tasks.semantic import cityscapes_truth
from tests.helpers.cityscapes import split_images
from tests.helpers.project import real_sample


def test_train_ids_are_cityscapes_own():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    theirs = {label.id: label.trainId for label in labels.labels if label.id >= 0}
    ours = to_train_ids(np.array(sorted(theirs)))
    assert dict(zip(sorted(theirs), ours.tolist(), strict=True)) == theirs
    assert {c["id"]: c["name"] for c in TRAIN_CATEGORIES} == {
        label.trainId: label.name for label in labels.labels if 0 <= label.trainId < 255
    }
    train = np.array([c["id"] for c in TRAIN_CATEGORIES])
    np.testing.assert_array_equal(to_label_ids(train), sorted(TRAIN_CLASSES))


def test_the_shared_frames_train_ids_are_its_labeltrainids_file():
    root = real_sample("cityscapes-frankfurt1")
    (image,) = split_images(root, "val").images
    ids = label_ids(root / "gtFine" / "val", image["file_name"], (image["height"], image["width"]))
    prefix = image["file_name"].removesuffix(IMAGE_SUFFIX)
    expected = np.asarray(
        Image.open(root / "gtFine" / "val" / f"{prefix}_gtFine_labelTrainIds.png")
    )
    # the shared files were downscaled one by one: they disagree on 77 pixels of boundaries
    assert (to_train_ids(ids) == expected).mean() > 0.997
    assert len(np.unique(expected[expected < 255])) >= 8  # stuff and things


def test_missing_or_foreign_label_files_are_named(tmp_path):
    folder = tmp_path / "gtFine" / "val" / "x"
    folder.mkdir(parents=True)
    with pytest.raises(MissingInputError, match=r"x_1_2_gtFine_instanceIds\.png: missing"):
        label_ids(tmp_path / "gtFine" / "val", "x/x_1_2_leftImg8bit.png", (2, 2))
    Image.fromarray(np.full((2, 2), 255, np.uint8)).save(folder / "x_1_2_gtFine_labelIds.png")
    with pytest.raises(InputError, match="not a labelIds file"):  # e.g. a labelTrainIds file
        label_ids(tmp_path / "gtFine" / "val", "x/x_1_2_leftImg8bit.png", (2, 2))


class Model:
    """Model classes numbered backwards (18 - train id) plus a class no category has."""

    class_names = {18 - c["id"]: c["name"] for c in TRAIN_CATEGORIES} | {19: "background"}


def predictions(truth: np.ndarray, seed: int) -> np.ndarray:
    """A segmenter's guess of a train-id map in the model's classes: shifted, a block of one
    wrong class, and pixels of the class that is no category."""
    rng = np.random.default_rng(seed)
    guess = np.roll(np.where(truth == 255, 0, truth), 3, axis=1)
    h, w = guess.shape
    guess[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 19)
    model_classes = 18 - guess
    model_classes[rng.random(guess.shape) < 0.05] = 19
    return model_classes


def cityscapes_evaluation(predicted: list[Path], truth: list[Path], work: Path, monkeypatch):
    """Cityscapes' own pixel-level evaluation of label-id PNGs (its module reads environment
    variables when imported and writes files: run in a folder of its own)."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("CITYSCAPES_DATASET", str(work))
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(work))
    pytest.importorskip("cityscapesscripts")
    module = importlib.reload(
        importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    )
    args = module.args
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, False
    args.colorized, args.bold, args.nocol = False, "", ""
    return module.evaluateImgLists([str(p) for p in predicted], [str(p) for p in truth], args)


@pytest.mark.parametrize("source", ["shared", "sample"])
def test_miou_agrees_with_cityscapes_evaluation(source, sample_layouts, tmp_path, monkeypatch):
    root = (
        real_sample("cityscapes-frankfurt1")
        if source == "shared"
        else sample_layouts / "cityscapes"
    )
    dataset = split_images(root, "val")
    annotations = root / "gtFine" / "val"
    truth = cityscapes_truth(annotations)
    guesses = {
        image["id"]: predictions(truth.ground_truth(image), seed=image["id"])
        for image in dataset.images
    }
    mapping = class_mapping(truth.categories, Model.class_names, None)
    out = tmp_path / "results"
    ours = score_predictions(
        "semantic_segmentation", dataset, guesses, mapping, out, semantic=truth
    )
    written = [label_png_path(out / "labels", image["file_name"]) for image in dataset.images]
    gt_files = [
        annotations / image["file_name"].replace(IMAGE_SUFFIX, "_gtFine_labelIds.png")
        for image in dataset.images
    ]
    (tmp_path / "work").mkdir()
    theirs = cityscapes_evaluation(written, gt_files, tmp_path / "work", monkeypatch)
    assert 0.05 < ours["miou"] < 0.95  # neither perfect nor nothing: a test that can fail
    assert ours["miou"] == pytest.approx(theirs["averageScoreClasses"], abs=1e-12)
    for name, iou in ours["per_class"].items():
        expected = theirs["classScores"][name]
        assert (iou is None and math.isnan(expected)) or iou == pytest.approx(expected, abs=1e-12)
    assert len(ours["per_class"]) == 19


def test_semantic_stages_on_cityscapes_depend_on_its_label_files(tmp_path):
    import yaml

    from icmflow.pipeline.dvcfile import render
    from icmflow.pipeline.params import load_params
    from tests.helpers.project import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["encode"].update(dataset="sample-cityscapes", train_split="train")
    raw["tasks"] = {
        "seg": {
            "kind": "semantic_segmentation",
            "backend": "torchvision",
            "weights": "models/seg.pth",
            "input_size": 128,
            "options": {"arch": "deeplabv3_resnet18", "num_classes": 19},
            "finetune": {"codecs": ["jpeg-q10"], "epochs": 1, "batch_size": 2},
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stages = yaml.safe_load(render(load_params(tmp_path / "params.yaml"), raw, REPO))["stages"]
    labels = "data/sample/cityscapes/gtFine/val"
    for group, key in (
        ("infer", "original-seg"),
        ("infer", "jpeg-q10-seg"),
        ("finetune", "jpeg-q10-seg"),
    ):
        assert labels in stages[group]["foreach"][key].values(), (group, key)
    raw["encode"]["dataset"] = "sample"  # the rasterised instances: no label files
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stages = yaml.safe_load(render(load_params(tmp_path / "params.yaml"), raw, REPO))["stages"]
    assert labels not in stages["infer"]["foreach"]["original-seg"].values()
