"""Panoptic quality (PQ, Kirillov et al. 2019), Cityscapes' panoptic ground truth, and panoptic
predictions made from an instance and a semantic model (until a panoptic backend exists).

A panoptic segmentation (`Panoptic`) is an H×W map of segment ids, 0 for void (ground truth:
not scored; prediction: no segment), and each segment's category and crowd flag.

`score_panoptic` follows panopticapi's `pq_compute`, which Cityscapes' own
`evalPanopticSemanticLabeling` copies: a predicted and a true segment of one category match when
their IoU, leaving out the predicted segment's pixels on void ground truth, exceeds 0.5 (so a
match is unique); unmatched true segments but crowds are false negatives; an unmatched
predicted segment is a false positive unless more than half of it lies on void or on a crowd of
its category. Per category PQ = Σ IoU / (TP + FP/2 + FN/2) = SQ · RQ, and `pq`, `sq`, `rq` are
means over the categories with any segment (TP + FP + FN > 0), also over things and stuff
alone. (torchmetrics' `PanopticQuality` differs: it does not count a true segment as missed
when more than half of it is void in the prediction.)

`cityscapes_panoptic` is what Cityscapes' `createPanopticImgs` makes of a gtFine instanceIds
file, in train ids: segment id = the instanceIds value; a thing's pixels without an instance
id (a group, e.g. `cargroup`) one crowd segment; labels Cityscapes ignores (caravan and trailer
among them) void.

`merge_panoptic` makes a panoptic prediction the way Panoptic FPN does (Kirillov et al. 2019,
as detectron2's `combine_semantic_and_instance_outputs`): instances by decreasing score, those
below `score_threshold` dropped; an instance loses the pixels already taken and is dropped when
more than `overlap_threshold` of it was taken; then each stuff category of the semantic map on
the pixels still free, dropped below `stuff_area` pixels; the rest is void.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icmflow.datasets.formats.cityscapes import (
    IGNORE_TRAIN_ID,
    INSTANCE_BASE,
    THING_TRAIN_IDS,
    TRAIN_CATEGORIES,
    instance_ids,
    to_train_ids,
)

VOID = 0


@dataclass
class Panoptic:
    ids: np.ndarray
    """H×W int64 segment ids; `VOID` (0) where no segment is."""
    segments: dict[int, tuple[int, bool]]
    """Segment id -> (category id, crowd)."""


@dataclass
class _Counts:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


def _areas(ids: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(ids, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _count_image(truth: Panoptic, prediction: Panoptic, counts: dict[int, _Counts]) -> None:
    if truth.ids.shape != prediction.ids.shape:
        raise ValueError(f"a prediction is {prediction.ids.shape}, its truth {truth.ids.shape}")
    unknown = set(_areas(prediction.ids)) - set(prediction.segments) - {VOID}
    if unknown:
        raise ValueError(f"segment ids {sorted(unknown)[:5]} of the prediction have no category")
    gt_area, pred_area = _areas(truth.ids), _areas(prediction.ids)
    offset = int(max(prediction.ids.max(initial=0), 0)) + 1
    pairs = _areas(truth.ids.astype(np.int64) * offset + prediction.ids)
    overlap = {(key // offset, key % offset): area for key, area in pairs.items()}
    matched_gt, matched_pred = set(), set()
    for (g, p), intersection in overlap.items():
        if g not in truth.segments or p not in prediction.segments:
            continue
        (category, crowd), (predicted, _) = truth.segments[g], prediction.segments[p]
        if crowd or category != predicted:
            continue
        union = pred_area[p] + gt_area[g] - intersection - overlap.get((VOID, p), 0)
        if intersection / union > 0.5:
            counts[category].tp += 1
            counts[category].iou += intersection / union
            matched_gt.add(g)
            matched_pred.add(p)
    crowds: dict[int, list[int]] = {}
    for g, (category, crowd) in truth.segments.items():
        if crowd:
            crowds.setdefault(category, []).append(g)
        elif g in gt_area and g not in matched_gt:
            counts[category].fn += 1
    for p, (category, _) in prediction.segments.items():
        if p not in pred_area or p in matched_pred:
            continue
        ignored = overlap.get((VOID, p), 0)
        ignored += sum(overlap.get((g, p), 0) for g in crowds.get(category, []))
        if ignored / pred_area[p] <= 0.5:
            counts[category].fp += 1


def _qualities(counts: list[_Counts]) -> dict[str, float | None]:
    scored = [c for c in counts if c.tp + c.fp + c.fn]
    if not scored:
        return {"pq": None, "sq": None, "rq": None, "categories": 0}
    rq = [c.tp / (c.tp + 0.5 * c.fp + 0.5 * c.fn) for c in scored]
    sq = [c.iou / c.tp if c.tp else 0.0 for c in scored]
    return {
        "pq": float(np.mean([s * r for s, r in zip(sq, rq, strict=True)])),
        "sq": float(np.mean(sq)),
        "rq": float(np.mean(rq)),
        "categories": len(scored),
    }


def score_panoptic(
    pairs: Iterable[tuple[Panoptic, Panoptic]], categories: list[dict], things: Iterable[int]
) -> dict:
    """PQ, SQ and RQ (module doc) of (truth, prediction) pairs over `categories` (id, name),
    `things` the ids of those with instances: overall, `things`, `stuff` and per class."""
    counts = {c["id"]: _Counts() for c in categories}
    images = 0
    for truth, prediction in pairs:
        _count_image(truth, prediction, counts)
        images += 1
    things = set(things)
    per_class = {}
    for c in categories:
        quality = _qualities([counts[c["id"]]])
        per_class[c["name"]] = {k: quality[k] for k in ("pq", "sq", "rq")}
    return {
        **_qualities(list(counts.values())),
        "things": _qualities([n for cid, n in counts.items() if cid in things]),
        "stuff": _qualities([n for cid, n in counts.items() if cid not in things]),
        "per_class": per_class,
        "images": images,
    }


def cityscapes_panoptic(annotations: Path, image: dict) -> Panoptic:
    """The panoptic ground truth of `image` from its instanceIds file under `annotations`
    (gtFine/<split>), in train ids (module doc)."""
    ids = instance_ids(annotations, image["file_name"], (image["height"], image["width"]))
    segments = {}
    for value in np.unique(ids).tolist():
        label = value // INSTANCE_BASE if value >= INSTANCE_BASE else value
        category = int(to_train_ids(np.array(label)))
        if category == IGNORE_TRAIN_ID:
            ids[ids == value] = VOID
            continue
        segments[value] = (category, value < INSTANCE_BASE and category in THING_TRAIN_IDS)
    return Panoptic(ids, segments)


def cityscapes_pq(pairs: Iterable[tuple[Panoptic, Panoptic]]) -> dict:
    """`score_panoptic` over Cityscapes' 19 classes in train ids."""
    return score_panoptic(pairs, TRAIN_CATEGORIES, THING_TRAIN_IDS)


@dataclass(frozen=True)
class Instance:
    mask: np.ndarray
    """H×W bool."""
    category: int
    score: float


def merge_panoptic(
    instances: Iterable[Instance],
    semantic: np.ndarray,
    stuff: Iterable[int],
    *,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    stuff_area: int = 4096,
) -> Panoptic:
    """A panoptic prediction from an instance model's `instances` and a semantic model's
    category map `semantic` (H×W; only its `stuff` categories are used), as Panoptic FPN
    merges them (module doc)."""
    ids = np.zeros(semantic.shape, dtype=np.int64)
    segments: dict[int, tuple[int, bool]] = {}
    for instance in sorted(instances, key=lambda i: -i.score):
        if instance.score < score_threshold:
            break
        mask = np.asarray(instance.mask, dtype=bool)
        area = int(mask.sum())
        if area == 0:
            continue
        taken = mask & (ids != VOID)
        if taken.sum() / area > overlap_threshold:
            continue
        segments[len(segments) + 1] = (int(instance.category), False)
        ids[mask & ~taken] = len(segments)
    stuff = set(stuff)
    for category in np.unique(semantic).tolist():
        if category not in stuff:
            continue
        region = (semantic == category) & (ids == VOID)
        if region.sum() < stuff_area:
            continue
        segments[len(segments) + 1] = (int(category), False)
        ids[region] = len(segments)
    return Panoptic(ids, segments)
