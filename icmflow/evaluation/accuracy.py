"""Accuracy against rate: the task models' scores on every codec's images, as table rows.

Each row is one task on one source (a codec, or `original`: the uncompressed images) with one
model (`pre-trained`: the task's own weights; `fine-tuned`: fine-tuned on that codec's coded
training images), the source's bpp, and the task's headline metrics (`HEADLINES`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

HEADLINES = {
    "detection": ("bbox_map", "bbox_map50"),
    "instance_segmentation": ("bbox_map", "bbox_map50", "segm_map", "segm_map50"),
    "semantic_segmentation": ("miou",),
    "foreground": ("mae",),
}
"""The metrics each task kind reports: mAP50-95 and mAP50 (COCOeval), mIoU, or MAE."""
LOWER_IS_BETTER = frozenset({"mae"})
"""Headline metrics whose smaller values are better (BD-rates and plots treat them so)."""

COLUMNS = ("task", "model", "codec", "family", "series", "setting", "bpp")


def headline(accuracy: dict) -> dict[str, float]:
    """The headline metrics of an `accuracy.json` (None, for no ground truth, as NaN)."""
    if "mae" in accuracy:  # foreground extraction
        return {"mae": math.nan if accuracy["mae"] is None else float(accuracy["mae"])}
    if "miou" in accuracy:
        values = {"miou": accuracy["miou"]}
    else:
        values = {
            f"{iou_type}_{key}": accuracy[iou_type][key]
            for iou_type in ("bbox", "segm")
            if iou_type in accuracy
            for key in ("map", "map50")
        }
    return {k: math.nan if v is None else float(v) for k, v in values.items()}


def accuracy_row(task: str, model: str, source: dict, accuracy: dict) -> dict[str, str | float]:
    """`source`: the codec's codec, family, series, setting and bpp (NaN for the original)."""
    return {"task": task, "model": model, **source, **headline(accuracy)}


def columns(kind: str) -> tuple[str, ...]:
    return COLUMNS + HEADLINES[kind]


def sort_rows(rows: Sequence[dict]) -> list[dict]:
    """Pre-trained first, the original images first among them, then by series and bpp."""
    return sorted(
        rows,
        key=lambda r: (
            r["model"] != "pre-trained",
            r["family"] != "original",
            r["series"],
            r["bpp"],
        ),
    )
