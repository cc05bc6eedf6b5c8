"""Panoptic quality: a hand-computed case, Cityscapes' own evaluation on the shared frame and the
generated sample, and panoptic predictions merged from instances and a semantic map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icmflow.datasets.formats.cityscapes import IMAGE_SUFFIX, THING_TRAIN_IDS, to_train_ids
from icmflow.tasks.panoptic import (
    Instance,
    Panoptic,
    cityscapes_panoptic,
    cityscapes_pq,
    merge_panoptic,
    score_panoptic,
)
from tests.helpers.cityscapes import split_images
from tests.helpers.project import real_sample

ROAD, PERSON, CAR, SKY = 0, 11, 13, 10
CATEGORIES = [
    {"id": ROAD, "name": "road"},
    {"id": SKY, "name": "sky"},
    {"id": PERSON, "name": "person"},
    {"id": CAR, "name": "car"},
]


def hand_case() -> tuple[Panoptic, Panoptic]:
    """Truth: road A (12 px), cars B and C (4 px each), void V, a crowd of people D (8 px).
    Prediction: road 1 (A but one pixel), car 2 (B and a void pixel), car 3 (half of C), person
    4 (on void), person 5 (the road pixel 1 lacks), person 6 (on the crowd)."""
    truth = np.array(
        [
            [1, 1, 1, 1, 1, 1, 4, 4],
            [1, 1, 1, 1, 1, 1, 4, 4],
            [2, 2, 3, 3, 0, 0, 4, 4],
            [2, 2, 3, 3, 0, 0, 4, 4],
        ]
    )
    prediction = np.array(
        [
            [1, 1, 1, 1, 1, 1, 6, 6],
            [1, 1, 1, 1, 1, 5, 6, 6],
            [2, 2, 0, 3, 2, 4, 6, 6],
            [2, 2, 0, 3, 4, 4, 6, 6],
        ]
    )
    return (
        Panoptic(truth, {1: (ROAD, False), 2: (CAR, False), 3: (CAR, False), 4: (PERSON, True)}),
        Panoptic(
            prediction,
            {1: (ROAD, False), 2: (CAR, False), 3: (CAR, False)}
            | {4: (PERSON, False), 5: (PERSON, False), 6: (PERSON, False)},
        ),
    )


def test_pq_of_a_hand_computed_case():
    # road: 1 match, IoU 11/12. car: B matches 2 with IoU 4 / (5 + 4 - 4 - 1 void) = 1; C and 3
    # overlap by IoU 2/4 = 0.5, no match: C a false negative, 3 a false positive. person: 5 a
    # false positive; 4 lies on void and 6 on the crowd, both ignored; the crowd is never missed.
    scores = score_panoptic([hand_case()], CATEGORIES, {PERSON, CAR})
    road, car, person = 11 / 12, 1 / (1 + 0.5 + 0.5), 0.0
    assert scores["per_class"]["road"] == pytest.approx({"pq": road, "sq": road, "rq": 1.0})
    assert scores["per_class"]["car"] == pytest.approx({"pq": car, "sq": 1.0, "rq": 0.5})
    assert scores["per_class"]["person"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert scores["per_class"]["sky"] == {"pq": None, "sq": None, "rq": None}  # no segment
    assert scores["pq"] == pytest.approx((road + car + person) / 3)
    assert scores["sq"] == pytest.approx((road + 1.0 + 0.0) / 3)
    assert scores["rq"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert scores["things"]["pq"] == pytest.approx((car + person) / 2)
    assert scores["stuff"]["pq"] == pytest.approx(road) and scores["categories"] == 3


def test_torchmetrics_does_not_miss_what_the_prediction_leaves_void():
    """Why icmflow does not use torchmetrics' PanopticQuality: a true segment the prediction
    leaves void is a false negative for panopticapi and Cityscapes, not for torchmetrics."""
    from torchmetrics.detection import PanopticQuality

    truth = np.array([[1, 1, 2, 2]])
    found = Panoptic(np.array([[1, 1, 0, 0]]), {1: (CAR, False)})
    ours = score_panoptic(
        [(Panoptic(truth, {1: (CAR, False), 2: (CAR, False)}), found)], CATEGORIES, {CAR}
    )
    assert ours["pq"] == pytest.approx(1 / (1 + 0.5))  # one match, one missed car
    as_pairs = [[[CAR, 1], [CAR, 1], [CAR, 2], [CAR, 2]]], [[[CAR, 1], [CAR, 1], [-1, 0], [-1, 0]]]
    metric = PanopticQuality(things={CAR}, stuffs={ROAD}, allow_unknown_preds_category=True)
    theirs = metric(torch.tensor([as_pairs[1]]), torch.tensor([as_pairs[0]]))
    assert float(theirs) == pytest.approx(1.0)


def test_merge_follows_panoptic_fpn():
    semantic = np.zeros((10, 10), dtype=np.int64)  # road...
    semantic[:2] = SKY  # ...20 px of sky, and a car the instances stand for
    semantic[6:, 6:] = CAR
    first = np.zeros((10, 10), dtype=bool)
    first[4:8, 0:4] = True  # 16 px
    second = np.zeros_like(first)
    second[5:9, 2:6] = True  # 16 px, 6 of them taken by the first
    third = np.zeros_like(first)
    third[4:7, 0:3] = True  # 9 px, all taken: dropped
    faint = np.zeros_like(first)
    faint[0, 9] = True
    instances = [
        Instance(second, CAR, 0.8),
        Instance(third, PERSON, 0.7),
        Instance(first, PERSON, 0.9),
        Instance(faint, CAR, 0.3),  # below the score threshold
    ]
    merged = merge_panoptic(instances, semantic, {ROAD, SKY}, stuff_area=30)
    assert merged.segments == {1: (PERSON, False), 2: (CAR, False), 3: (ROAD, False)}
    assert (merged.ids == 1).sum() == 16 and (merged.ids == 2).sum() == 10
    assert (merged.ids[:2] == 0).all()  # sky: 20 px < 30, void
    assert (merged.ids == 3).sum() == 100 - 20 - 16 - 26  # road: the rest of its pixels
    assert (merged.ids[6:, 6:] == 0).all()  # the semantic car is no stuff: void


def segments_info(panoptic: Panoptic) -> list[dict]:
    present = set(np.unique(panoptic.ids).tolist())
    return [
        {"id": int(i), "category_id": c, "iscrowd": int(crowd)}
        for i, (c, crowd) in panoptic.segments.items()
        if i in present
    ]


def as_png(ids: np.ndarray, path: Path) -> None:
    """COCO panoptic PNG: id = R + 256·G + 256²·B."""
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def guess(truth: Panoptic, image_id: int) -> Panoptic:
    """A panoptic prediction merged from imperfect instance and semantic models: the true
    instances but every third (dropped), shifted by two pixels; the semantic map shifted."""
    instances = [
        Instance(np.roll(truth.ids == i, 2, axis=1), category, 1.0 - 0.01 * k)
        for k, (i, (category, crowd)) in enumerate(sorted(truth.segments.items()))
        if category in THING_TRAIN_IDS and not crowd and k % 3 != image_id % 3
    ]
    categories = np.full(truth.ids.shape, 255)
    for i, (category, _) in truth.segments.items():
        categories[truth.ids == i] = category
    stuff = set(range(19)) - THING_TRAIN_IDS
    return merge_panoptic(instances, np.roll(categories, 3, axis=0), stuff, stuff_area=64)


@pytest.mark.parametrize("source", ["shared", "sample"])
def test_pq_agrees_with_cityscapes_evaluation(source, sample_layouts, tmp_path, monkeypatch):
    pytest.importorskip("cityscapesscripts")
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as evaluation
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    root = (
        real_sample("cityscapes-frankfurt1")
        if source == "shared"
        else sample_layouts / "cityscapes"
    )
    dataset = split_images(root, "val")
    monkeypatch.chdir(tmp_path)
    convert2panoptic(str(root / "gtFine"), str(tmp_path), useTrainId=True, setNames=["val"])
    converted = json.loads((tmp_path / "cityscapes_panoptic_val_trainId.json").read_text())
    by_image = {a["image_id"]: a for a in converted["annotations"]}
    pairs, matched = [], []
    (tmp_path / "pred").mkdir()
    for image in dataset.images:
        truth = cityscapes_panoptic(root / "gtFine" / "val", image)
        name = Path(image["file_name"]).name.removesuffix(IMAGE_SUFFIX)
        theirs = by_image[name]
        png = np.asarray(
            Image.open(tmp_path / "cityscapes_panoptic_val_trainId" / theirs["file_name"])
        )
        np.testing.assert_array_equal(  # the same ground truth as Cityscapes' own conversion
            png[..., 0] + 256 * png[..., 1].astype(np.int64) + 65536 * png[..., 2], truth.ids
        )
        assert sorted(segments_info(truth), key=lambda s: s["id"]) == [
            {k: s[k] for k in ("id", "category_id", "iscrowd")} for s in theirs["segments_info"]
        ]
        prediction = guess(truth, image["id"])
        as_png(prediction.ids, tmp_path / "pred" / theirs["file_name"])
        pairs.append((truth, prediction))
        matched.append(
            (
                theirs,
                {
                    "file_name": theirs["file_name"],
                    "segments_info": segments_info(prediction),
                    "image_id": theirs["image_id"],
                },
            )
        )
    categories = {c["id"]: c for c in converted["categories"]}
    stat = evaluation.pq_compute_single_core(
        0,
        matched,
        str(tmp_path / "cityscapes_panoptic_val_trainId"),
        str(tmp_path / "pred"),
        categories,
    )
    expected = evaluation.average_pq(stat, categories)
    ours = cityscapes_pq(pairs)
    assert 0.05 < ours["pq"] < 0.95  # neither perfect nor nothing: a test that can fail
    for ours_key, theirs_key in (("pq", "pq"), ("sq", "sq"), ("rq", "rq"), ("categories", "n")):
        assert ours[ours_key] == pytest.approx(expected["All"][theirs_key], abs=1e-12)
    assert ours["things"]["pq"] == pytest.approx(expected["Things"]["pq"], abs=1e-12)
    assert ours["stuff"]["pq"] == pytest.approx(expected["Stuff"]["pq"], abs=1e-12)
    assert to_train_ids(np.array([26]))[0] == 13  # car
