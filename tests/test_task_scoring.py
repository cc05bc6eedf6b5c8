"""Task evaluation: class mapping, COCO results and label PNGs, COCO AP and mIoU scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from icmflow.core.errors import MissingInputError
from icmflow.datasets.prepared import PreparedDataset
from icmflow.datasets.rle import annotation_rle, uncompressed_rle
from icmflow.tasks.classes import ClassMappingError, class_mapping
from icmflow.tasks.predictions import (
    coco_results,
    read_label_png,
    read_results,
    write_label_maps,
    write_results,
)
from icmflow.tasks.scoring import score_detection, score_semantic, semantic_ground_truth
from icmflow.vision.tasks.base import Detections

CATEGORIES = [
    {"id": 1, "name": "car"},
    {"id": 2, "name": "person"},
    {"id": 3, "name": "bus"},  # no ground truth
]
MODEL_CLASSES = {0: "person", 1: "bicycle", 2: "car", 5: "bus"}
ONE_OF_TWO = 51 / 101
"""COCO AP of a class with one of its two objects found (and nothing false): precision 1 at
the 51 recall thresholds 0, 0.01, ..., 0.50 of 101, 0 above."""


def _box_annotation(ann_id: int, image_id: int, category: int, bbox: list[float]) -> dict:
    x, y, w, h = bbox
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "bbox": bbox,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        "area": w * h,
        "iscrowd": 0,
    }


def _crowd() -> dict:
    mask = np.zeros((60, 60), dtype=bool)
    mask[0:10, 40:60] = True
    return {
        "id": 5,
        "image_id": 2,
        "category_id": 2,
        "bbox": [40, 0, 20, 10],
        "segmentation": uncompressed_rle(mask),
        "area": 200,
        "iscrowd": 1,
    }


@pytest.fixture
def ground_truth() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "one.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "sub/two.jpg", "width": 60, "height": 60},
        ],
        "annotations": [
            _box_annotation(1, 1, 1, [10, 10, 30, 20]),
            _box_annotation(2, 1, 2, [50, 30, 20, 40]),
            _box_annotation(3, 2, 1, [5, 5, 20, 20]),
            _box_annotation(4, 2, 2, [30, 30, 20, 20]),
            _crowd(),
        ],
        "categories": CATEGORIES,
    }


MAPPING = class_mapping(CATEGORIES, MODEL_CLASSES, None)
TO_MODEL = {1: 2, 2: 0}  # car, person


def _predictions(
    ground_truth: dict, *, skip: frozenset[int] = frozenset(), shift: dict | None = None
) -> dict[int, Detections]:
    """Every non-crowd object detected exactly (annotation ids in `skip` missed, those in
    `shift` moved right by that many pixels at a lower score), plus a bicycle per image."""
    shift = shift or {}
    predictions = {}
    for image in ground_truth["images"]:
        boxes, scores, classes, masks = [[0, 0, 5, 5]], [0.99], [1], [_rle(image, [0, 0, 5, 5])]
        for ann in ground_truth["annotations"]:
            if ann["image_id"] != image["id"] or ann["iscrowd"] or ann["id"] in skip:
                continue
            x, y, w, h = ann["bbox"]
            x += shift.get(ann["id"], 0)
            boxes.append([x, y, x + w, y + h])
            scores.append(0.5 if ann["id"] in shift else 0.9)
            classes.append(TO_MODEL[ann["category_id"]])
            masks.append(_rle(image, [x, y, w, h]))
        predictions[image["id"]] = Detections(
            np.array(boxes, dtype=np.float32), np.array(scores), np.array(classes), masks
        )
    return predictions


def _rle(image: dict, bbox: list[float]) -> dict:
    return annotation_rle({"bbox": bbox}, image["height"], image["width"])


@pytest.mark.parametrize(
    ("kind", "iou_type"), [("detection", "bbox"), ("instance_segmentation", "segm")]
)
def test_perfect_predictions_score_one(ground_truth: dict, kind: str, iou_type: str) -> None:
    results = coco_results(_predictions(ground_truth), MAPPING, kind)
    scores = score_detection(ground_truth, results, iou_type)
    assert (scores["map"], scores["map50"], scores["map75"]) == (1.0, 1.0, 1.0)
    assert scores["per_class"]["car"] == {"map": 1.0, "map50": 1.0, "map75": 1.0}
    assert scores["per_class"]["bus"] == {"map": None, "map50": None, "map75": None}
    assert (scores["images"], scores["detections"]) == (2, 4)


def test_one_of_two_missed_halves_the_class(ground_truth: dict) -> None:
    results = coco_results(_predictions(ground_truth, skip=frozenset({3})), MAPPING, "detection")
    scores = score_detection(ground_truth, results, "bbox")
    assert scores["per_class"]["car"]["map50"] == pytest.approx(ONE_OF_TWO)
    assert scores["per_class"]["car"]["map"] == pytest.approx(ONE_OF_TWO)
    assert scores["per_class"]["person"]["map"] == 1.0
    assert scores["map"] == pytest.approx((1 + ONE_OF_TWO) / 2)


def test_shifted_box_counts_only_at_loose_iou(ground_truth: dict) -> None:
    # shifted 5 px: IoU 500/700 = 0.71, a match at thresholds 0.50..0.70, a miss at 0.75..0.95
    predictions = _predictions(ground_truth, shift={1: 5})
    scores = score_detection(ground_truth, coco_results(predictions, MAPPING, "detection"), "bbox")
    car = scores["per_class"]["car"]
    assert car["map50"] == 1.0
    assert car["map75"] == pytest.approx(ONE_OF_TWO)
    assert car["map"] == pytest.approx((5 + 5 * ONE_OF_TWO) / 10)


def test_empty_results_score_zero(ground_truth: dict) -> None:
    for iou_type in ("bbox", "segm"):
        scores = score_detection(ground_truth, [], iou_type)
        assert (scores["map"], scores["map50"], scores["map75"]) == (0.0, 0.0, 0.0)
        assert scores["per_class"]["person"]["map"] == 0.0
        assert scores["per_class"]["bus"]["map"] is None
        assert scores["detections"] == 0


def test_results_of_other_images_are_refused(ground_truth: dict) -> None:
    stray = [{"image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(MissingInputError, match="image id"):
        score_detection(ground_truth, stray, "bbox")


def test_unmapped_categories_are_named() -> None:
    categories = [*CATEGORIES, {"id": 7, "name": "traffic_light"}, {"id": 8, "name": "tram"}]
    with pytest.raises(ClassMappingError) as error:
        class_mapping(categories, MODEL_CLASSES, None)
    message = str(error.value)
    assert "7 ('traffic_light')" in message and "8 ('tram')" in message
    assert "1 ('bicycle')" in message and "`classes:`" in message
    assert "car" not in message.split("match no class")[0]


def test_names_match_across_spaces_underscores_and_case() -> None:
    categories = [{"id": 4, "name": "Traffic_Light"}, {"id": 9, "name": "stop-sign"}]
    mapping = class_mapping(categories, {0: "person", 9: "traffic light", 11: "stop sign"}, None)
    assert mapping.to_model == {4: 9, 9: 11}
    assert (mapping.category_of(9), mapping.category_of(0)) == (4, None)
    assert "1 model classes dropped" in mapping.description


def test_explicit_mapping_is_checked() -> None:
    mapping = class_mapping(CATEGORIES[:2], {0: "vehicle", 1: "pedestrian"}, {1: 0, 2: 1})
    assert mapping.category_of(1) == 2
    with pytest.raises(ClassMappingError, match="model classes"):
        class_mapping(CATEGORIES[:2], {0: "vehicle"}, {1: 0, 2: 3})
    with pytest.raises(ClassMappingError, match="all map to model class 0"):
        class_mapping(CATEGORIES[:2], {0: "vehicle"}, {1: 0, 2: 0})


def test_coco_results_boxes_and_dropped_classes() -> None:
    detections = Detections(
        boxes=np.array([[10.0, 20.0, 40.5, 30.25], [0, 0, 1, 1]]),
        scores=np.array([0.123456789, 0.9]),
        classes=np.array([2, 1]),  # car, bicycle (no dataset category)
    )
    results = coco_results({7: detections}, MAPPING, "detection")
    assert results == [
        {"image_id": 7, "category_id": 1, "bbox": [10, 20, 30.5, 10.25], "score": 0.12346}
    ]


def test_rle_counts_are_text_and_decode_to_the_mask(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[1:4, 2:7] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    detections = Detections(np.array([[2.0, 1, 7, 4]]), np.array([0.8]), np.array([0]), masks=[rle])
    path = tmp_path / "results.json"
    write_results(path, coco_results({3: detections}, MAPPING, "instance_segmentation"))
    (result,) = read_results(path)
    assert isinstance(json.loads(path.read_text())[0]["segmentation"]["counts"], str)
    assert (mask_utils.decode(result["segmentation"]) == mask).all()


def test_label_pngs_hold_category_ids(tmp_path: Path) -> None:
    classes = np.array([[0, 1, 2], [5, 2, 40]])  # person, bicycle, car; bus; unknown
    labels = {2: MAPPING.categories_of(classes)}
    write_label_maps(labels, tmp_path, {2: "sub/two.jpg"}, largest=max(MAPPING.category_names))
    assert (tmp_path / "sub" / "two.png").is_file()
    labels = read_label_png(tmp_path, "sub/two.jpg")
    assert labels.tolist() == [[2, 0, 1], [3, 1, 0]]


def test_miou_of_tiny_maps() -> None:
    truth = [np.array([[0, 1, 1]]), np.array([[2, 2, 255]])]
    predicted = [np.array([[1, 1, 0]]), np.array([[2, 1, 2]])]
    scores = score_semantic(truth, predicted, CATEGORIES, ignore_index=255)
    # car: 1 hit, 2 false (on background and person), 1 missed; person: 1 hit, 1 missed
    assert scores["per_class"] == {"car": 1 / 4, "person": 1 / 2, "bus": None}
    assert scores["miou"] == pytest.approx(3 / 8)
    assert scores["pixel_accuracy"] == pytest.approx(2 / 5)
    assert scores["images"] == 2


def test_semantic_ground_truth_ignores_crowds(ground_truth: dict, tmp_path: Path) -> None:
    dataset = PreparedDataset(tmp_path / "val.json", ground_truth)
    labels = semantic_ground_truth(dataset, ground_truth["images"][1])
    assert labels.shape == (60, 60)
    assert (labels[0:10, 40:60] == 255).all() and (labels == 255).sum() == 200
    assert labels[15, 15] == 1 and labels[40, 40] == 2 and labels[55, 2] == 0
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 255}
