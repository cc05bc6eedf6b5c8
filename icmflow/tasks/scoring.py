"""Scores of task predictions against a prepared dataset's ground truth.

Detection and instance segmentation: pycocotools' COCOeval (IoU on boxes or masks, up to 100
detections per image, all object sizes), read from its precision array as `summarize` does.
`map` is AP averaged over IoU 0.50:0.95, `map50` and `map75` at IoU 0.50 and 0.75; each is the
mean over the categories that have (non-crowd) ground truth in the scored images. A category
without ground truth has no AP: its `per_class` values are None (COCOeval's -1), and a dataset
without any ground truth has None overall.

Semantic segmentation: a confusion matrix over all scored pixels (ground truth `ignore_index`
left out), by default with background (0) a label of its own: predicting a category on
background counts against that category's IoU. Without background (Cityscapes' 19 classes)
every label is a category. A prediction of `ignore_index` is "no class": it counts against the
true category (a false negative) and for no other, as Cityscapes' own evaluation counts a
predicted label it ignores. `miou` is the mean IoU over the categories present in the ground
truth or the predictions; an absent category has IoU None and is left out of the mean (as
Cityscapes leaves out a class whose IoU is NaN). Pixel accuracy counts every scored pixel,
background included.

Foreground extraction (paper 004): the mean absolute error between the predicted foreground
probability map and the object mask (every annotated object, crowds included: 1, background 0),
per image, then averaged over the images, as salient-object benchmarks (DUTS) compute it:
lower is better. The predictions scored are those written as 8-bit PNGs (p·255 rounded), so that
the score can be recomputed from the files.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from typing import Literal

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from icmflow.core.errors import MissingInputError
from icmflow.datasets.prepared import PreparedDataset
from icmflow.datasets.rle import annotation_rle, decode, object_mask

IGNORE_INDEX = 255


def _quiet_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _with_rle_masks(dataset: dict) -> list[dict]:
    """The annotations with every segmentation as a compressed RLE (box-only ones their box)."""
    sizes = {image["id"]: (image["height"], image["width"]) for image in dataset["images"]}
    return [
        {**ann, "segmentation": annotation_rle(ann, *sizes[ann["image_id"]])}
        for ann in dataset["annotations"]
    ]


def _ap(precision: np.ndarray) -> float | None:
    """Mean of COCOeval precisions, None where all are -1 (no ground truth)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def score_detection(
    ground_truth: dict, results: list[dict], iou_type: Literal["bbox", "segm"]
) -> dict:
    """COCO AP of `results` (COCO results JSON) on the dataset dict `ground_truth`.

    Returns map, map50, map75, per_class {category name: {map, map50, map75}}, the number of images
    scored and of detections. Results of images the ground truth lacks are refused (stale).
    """
    annotations = (
        _with_rle_masks(ground_truth) if iou_type == "segm" else ground_truth["annotations"]
    )
    gt = _quiet_coco({**ground_truth, "annotations": annotations})
    stray = {r["image_id"] for r in results} - set(gt.getImgIds())
    if stray:
        raise MissingInputError(
            f"the results name {len(stray)} image id(s) the dataset lacks (e.g. {min(stray)}): "
            "they were predicted on another dataset; predict again"
        )
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])  # COCOeval's order
    if results:
        precision = _precision(gt, results, iou_type)
    else:  # loadRes refuses an empty list; no detection means precision 0 wherever there is GT
        has_gt = [bool(gt.getAnnIds(catIds=[c["id"]], iscrowd=False)) for c in categories]
        precision = np.broadcast_to(np.where(has_gt, 0.0, -1.0), (10, 101, len(categories)))
    # precision: [IoU threshold 0.50, 0.55, ..., 0.95; recall 0, 0.01, ..., 1; category]
    return {
        **_aps(precision),
        "per_class": {
            c["name"]: _aps(precision[:, :, k : k + 1]) for k, c in enumerate(categories)
        },
        "images": len(ground_truth["images"]),
        "detections": len(results),
    }


def _aps(precision: np.ndarray) -> dict[str, float | None]:
    return {"map": _ap(precision), "map50": _ap(precision[0]), "map75": _ap(precision[5])}


def _precision(gt: COCO, results: list[dict], iou_type: str) -> np.ndarray:
    """COCOeval's precision [IoU, recall, category] over all areas at 100 detections per image."""
    if iou_type == "segm":  # loadRes then takes area and box from the mask, as COCO's own tools
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        results = [dict(r) for r in results]  # loadRes adds fields to its input
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation.eval["precision"][:, :, :, 0, -1]


def score_semantic(
    ground_truth_maps: Iterable[np.ndarray],
    predicted_maps: Iterable[np.ndarray],
    categories: list[dict],
    ignore_index: int = IGNORE_INDEX,
    *,
    background: bool = True,
) -> dict:
    """mIoU, per-class IoU and pixel accuracy of category-id maps (0 background, unless
    `background` is False), accumulated over the images; the two iterables (lists or
    generators) go in the same image order."""
    labels = [0] * background + sorted(c["id"] for c in categories)
    n = len(labels)
    confusion = np.zeros((n, n + 1), dtype=np.int64)  # [truth, prediction]; last: no class
    images = 0
    for truth, predicted in zip(ground_truth_maps, predicted_maps, strict=True):
        if truth.shape != predicted.shape:
            raise ValueError(
                f"a predicted map is {predicted.shape}, its ground truth {truth.shape}"
            )
        scored = truth != ignore_index
        predicted = predicted[scored]
        no_class = predicted == ignore_index
        rows = _label_indices(truth[scored], labels)
        columns = np.full(predicted.shape, n)
        columns[~no_class] = _label_indices(predicted[~no_class], labels)
        confusion += np.bincount(rows * (n + 1) + columns, minlength=n * (n + 1)).reshape(
            confusion.shape
        )
        images += 1
    true_positives = np.diag(confusion)
    unions = confusion[:, :n].sum(0) + confusion.sum(1) - true_positives
    names = {c["id"]: c["name"] for c in categories}
    per_class = {
        names[label]: float(true_positives[k] / unions[k]) if unions[k] else None
        for k, label in enumerate(labels)
        if label in names
    }
    present = [iou for iou in per_class.values() if iou is not None]
    total = int(confusion.sum())
    return {
        "miou": float(np.mean(present)) if present else None,
        "pixel_accuracy": float(true_positives.sum() / total) if total else None,
        "per_class": per_class,
        "images": images,
    }


def _label_indices(values: np.ndarray, labels: list[int]) -> np.ndarray:
    """Positions of `values` in the sorted `labels`; a value that is no label is an error."""
    indices = np.searchsorted(labels, values)
    known = indices < len(labels)
    known[known] = np.asarray(labels)[indices[known]] == values[known]
    if not known.all():
        stray = sorted(set(np.unique(values[~known]).tolist()))
        raise ValueError(f"label values {stray[:5]} are no label (category id, background 0)")
    return indices


def semantic_ground_truth(
    dataset: PreparedDataset, image: dict, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """One image's annotations as an (H, W) int64 map of category ids: 0 background,
    `ignore_index` on crowd regions. Crowd regions are painted first and the other annotations
    over them in order (a later one covers an earlier one), so an instance inside a crowd keeps
    its category."""
    ids = [c["id"] for c in dataset.data["categories"]]
    if 0 in ids or ignore_index in ids:
        raise ValueError(f"category ids must differ from background 0 and ignore {ignore_index}")
    height, width = image["height"], image["width"]
    labels = np.zeros((height, width), dtype=np.int64)
    annotations = dataset.annotations[image["id"]]
    for ann in sorted(annotations, key=lambda a: not a["iscrowd"]):  # stable: crowd first
        labels[_mask(ann, height, width)] = ignore_index if ann["iscrowd"] else ann["category_id"]
    return labels


def _mask(annotation: dict, height: int, width: int) -> np.ndarray:
    return decode(annotation_rle(annotation, height, width))


def foreground_ground_truth(dataset: PreparedDataset, image: dict) -> np.ndarray:
    """One image's object mask as an (H, W) int64 map: 1 on every annotated object (crowd
    regions included: a group of objects is foreground), 0 on the background."""
    annotations = dataset.annotations[image["id"]]
    mask = object_mask(annotations, image["height"], image["width"], include_crowd=True)
    return mask.astype(np.int64)


def score_foreground(
    ground_truth_masks: Iterable[np.ndarray], predicted_maps: Iterable[np.ndarray]
) -> dict:
    """MAE of foreground probability maps in [0, 1] against 0/1 masks: each image's mean
    absolute error, averaged over the images (module doc); the two iterables in the same order."""
    errors = []
    for truth, predicted in zip(ground_truth_masks, predicted_maps, strict=True):
        if truth.shape != predicted.shape:
            raise ValueError(
                f"a predicted map is {predicted.shape}, its ground truth {truth.shape}"
            )
        if predicted.size and not (predicted.min() >= 0 and predicted.max() <= 1):
            raise ValueError("foreground maps are probabilities in [0, 1]")
        errors.append(float(np.abs(predicted.astype(np.float64) - truth).mean()))
    return {"mae": float(np.mean(errors)) if errors else None, "images": len(errors)}
