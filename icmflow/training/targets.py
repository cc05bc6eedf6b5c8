"""Ground-truth targets of training crops: the annotations inside each crop, in model classes.

Task-driven objectives compare the recognition model's output on x̂ with a target: by default
the model's own predictions on x (pseudo-labels); with `targets: ground-truth` the dataset's
annotations, cropped as the image is (`TrainingCrops(..., targets=GroundTruth(...))`):

- `boxes`: each sample carries an (n, 5) float tensor `x0, y0, x1, y1, class` (pixels of the
  crop, model classes) of the non-crowd boxes whose part inside the crop keeps at least
  `MIN_VISIBLE` of their area and is at least 2 pixels wide and high;
- `class_map`: each sample carries a P×P int64 map of model classes: background 0, crowd
  regions `IGNORE_INDEX`, annotations painted over crowd regions in order;
- `foreground`: each sample carries a P×P int64 object mask: 1 on every annotated object
  (crowds included), 0 on the background (`scoring.foreground_ground_truth`).

Images smaller than the crop are mirror-padded; so are class maps, and boxes get their mirror
images in the padding, so that what the crop shows is what its targets say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from icmflow.datasets.prepared import PreparedDataset
from icmflow.tasks.scoring import IGNORE_INDEX, foreground_ground_truth, semantic_ground_truth
from icmflow.vision.tasks.differentiable import TargetKind

MIN_VISIBLE = 0.3
"""The fraction of a box's area a crop must keep for the box to be a target of it."""
TARGETS = "targets"
"""The batch key of ground-truth targets."""


@dataclass(frozen=True)
class GroundTruth:
    """Which targets crops carry, and the model class of each dataset category."""

    kind: TargetKind
    class_of: dict[int, int]
    """Category id -> model class; categories it leaves out are no targets."""

    def image_targets(self, dataset: PreparedDataset, image: dict) -> np.ndarray:
        """One image's targets at its own size: (n, 5) boxes, an H×W class map or object mask."""
        if self.kind == "foreground":
            return foreground_ground_truth(dataset, image)
        if self.kind == "boxes":
            rows = [
                [*box_corners(a["bbox"]), self.class_of[a["category_id"]]]
                for a in dataset.annotations[image["id"]]
                if not a["iscrowd"] and a["category_id"] in self.class_of
            ]
            return np.asarray(rows, dtype=np.float32).reshape(-1, 5)
        categories = semantic_ground_truth(dataset, image)
        lookup = np.zeros(max([IGNORE_INDEX, *self.class_of]) + 1, dtype=np.int64)
        for category, model_class in self.class_of.items():
            lookup[category] = model_class
        lookup[IGNORE_INDEX] = IGNORE_INDEX
        return lookup[categories]


def box_corners(bbox: list[float]) -> tuple[float, float, float, float]:
    x, y, w, h = bbox
    return x, y, x + w, y + h


def mirror_boxes(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """`boxes` of an H×W image plus their mirror images in the symmetric padding that
    `training.data.pad_to(…, size)` adds at the bottom and right."""
    parts = [boxes]
    if width < size:
        flipped = boxes.copy()
        flipped[:, [0, 2]] = 2 * width - boxes[:, [2, 0]]
        parts.append(flipped)
    both = np.concatenate(parts)
    if height < size:
        flipped = both.copy()
        flipped[:, [1, 3]] = 2 * height - both[:, [3, 1]]
        both = np.concatenate([both, flipped])
    return both


def crop_boxes(boxes: np.ndarray, top: int, left: int, size: int) -> torch.Tensor:
    """The boxes a `size`×`size` crop at (`top`, `left`) keeps, in its pixels (module doc)."""
    shifted = boxes.copy()
    shifted[:, [0, 2]] -= left
    shifted[:, [1, 3]] -= top
    clipped = shifted.copy()
    clipped[:, :4] = np.clip(shifted[:, :4], 0, size)
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (w >= 2) & (h >= 2) & (w * h >= MIN_VISIBLE * np.maximum(area, 1e-6))
    return torch.from_numpy(np.ascontiguousarray(clipped[keep]))
