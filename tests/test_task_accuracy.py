"""`predict_dataset` + `score_predictions` on the sample with a model that answers the ground
truth: every task kind scores perfectly, and what they write has the documented form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icmflow.datasets.rle import annotation_rle, decode
from icmflow.tasks.accuracy import predict_dataset, score_predictions
from icmflow.tasks.classes import class_mapping
from icmflow.tasks.predictions import read_label_png
from icmflow.tasks.scoring import semantic_ground_truth
from icmflow.vision.tasks.base import Detections, TaskModel


class Oracle(TaskModel):
    """Predicts the annotations of the images it is given, in the order of `dataset.images`:
    detectors with class = category id - 1 (as a YOLO trained on the dataset numbers them),
    segmenters with class = category id and class 0 "background" (no category)."""

    def __init__(self, dataset, kind):
        self.dataset, self.kind, self.next = dataset, kind, 0
        names = {c["id"]: c["name"] for c in dataset.data["categories"]}
        if kind == "semantic_segmentation":
            self.class_names = {0: "background", **names}
        else:
            self.class_names = {cid - 1: name for cid, name in names.items()}

    def predict(self, images):
        found = []
        for rgb in images:
            image = self.dataset.images[self.next]
            self.next += 1
            assert rgb.shape == (image["height"], image["width"], 3)
            if self.kind == "semantic_segmentation":
                labels = semantic_ground_truth(self.dataset, image)
                found.append(np.where(labels == 255, 0, labels))
                continue
            objects = [a for a in self.dataset.annotations[image["id"]] if not a["iscrowd"]]
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in objects)])
            masks = [annotation_rle(a, image["height"], image["width"]) for a in objects]
            found.append(
                Detections(
                    boxes=boxes.reshape(-1, 4),
                    scores=np.ones(len(objects)),
                    classes=np.array([a["category_id"] - 1 for a in objects], dtype=np.int64),
                    masks=masks if self.kind == "instance_segmentation" else None,
                )
            )
        return found


@pytest.mark.parametrize("kind", ["detection", "instance_segmentation"])
def test_perfect_detections_score_one(sample_prepared, kind, tmp_path):
    val = sample_prepared["val"]
    model = Oracle(val, kind)
    mapping = class_mapping(val.data["categories"], model.class_names, None)
    accuracy = score_predictions(
        kind, val, predict_dataset(model, val, batch_size=3), mapping, tmp_path
    )
    iou_types = {"bbox"} | ({"segm"} if kind == "instance_segmentation" else set())
    assert set(accuracy) == iou_types
    for scores in accuracy.values():
        assert scores["map"] == pytest.approx(1.0) and scores["map50"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert {r["category_id"] for r in results} == {c["id"] for c in val.data["categories"]}
    if kind == "instance_segmentation":
        first = results[0]
        image = next(i for i in val.images if i["id"] == first["image_id"])
        assert decode(first["segmentation"]).shape == (image["height"], image["width"])


def test_perfect_label_maps_score_miou_one(sample_prepared, tmp_path):
    val = sample_prepared["val"]
    model = Oracle(val, "semantic_segmentation")
    mapping = class_mapping(val.data["categories"], model.class_names, None)
    predictions = predict_dataset(model, val)
    accuracy = score_predictions("semantic_segmentation", val, predictions, mapping, tmp_path)
    assert accuracy["miou"] == pytest.approx(1.0)
    image = val.images[0]
    written = read_label_png(tmp_path / "labels", image["file_name"])
    truth = semantic_ground_truth(val, image)
    np.testing.assert_array_equal(written[truth != 255], truth[truth != 255])
