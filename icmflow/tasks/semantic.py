"""What semantic segmentations are scored against: the classes predictions map onto, each
image's ground-truth map, and the label PNGs predictions are written as.

- By default (`instance_truth`): the dataset's instance annotations rasterised per category
  (`scoring.semantic_ground_truth`): background 0 is a label of its own, crowd regions are
  ignored, model classes that are no category predict background, and label PNGs hold
  category ids. Stuff is background: only what has instances is scored.
- Cityscapes (`cityscapes_truth`): the 19 classes Cityscapes evaluates, stuff and things
  (train ids 0..18: `TRAIN_CATEGORIES`), from each image's `gtFine` labelIds (label ids
  Cityscapes ignores: 255, left out). Model classes that are no class predict 255, "no class",
  which counts against the true class only, as a predicted ignored label does in Cityscapes'
  evaluation. Label PNGs hold Cityscapes label ids (0 for no class), the results format its
  `evalPixelLevelSemanticLabeling` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icmflow.datasets.formats.cityscapes import (
    IGNORE_TRAIN_ID,
    MAX_LABEL_ID,
    TRAIN_CATEGORIES,
    label_ids,
    to_label_ids,
    to_train_ids,
)
from icmflow.datasets.prepared import PreparedDataset
from icmflow.tasks.classes import ClassMapping
from icmflow.tasks.scoring import score_semantic, semantic_ground_truth


@dataclass(frozen=True)
class SemanticTruth:
    categories: list[dict]
    """The classes a model's classes are mapped onto (ids and names)."""
    background: bool
    """Whether 0 is background, a label of its own (else every label is a category)."""
    unmapped: int
    """What a model class that is no category predicts: background 0, or 255 (no class)."""
    ground_truth: Callable[[dict], np.ndarray]
    """An image entry -> its (H, W) int map of labels, 255 where not scored."""
    png_values: Callable[[np.ndarray], np.ndarray]
    """A predicted label map -> the values its label PNG holds."""
    png_largest: int
    """The largest value a label PNG can hold."""

    def predicted(self, mapping: ClassMapping, prediction: np.ndarray) -> np.ndarray:
        """A map of model classes as a map of labels."""
        return mapping.categories_of(prediction, unmapped=self.unmapped)

    def score(self, dataset: PreparedDataset, predicted: dict[int, np.ndarray]) -> dict:
        """mIoU, per-class IoU and pixel accuracy of label maps by image id."""
        images = dataset.images
        maps: Iterator[np.ndarray] = (self.ground_truth(image) for image in images)
        return score_semantic(
            maps,
            (predicted[image["id"]] for image in images),
            self.categories,
            background=self.background,
        )


def instance_truth(dataset: PreparedDataset) -> SemanticTruth:
    return SemanticTruth(
        categories=dataset.data["categories"],
        background=True,
        unmapped=0,
        ground_truth=lambda image: semantic_ground_truth(dataset, image),
        png_values=lambda labels: labels,
        png_largest=max((c["id"] for c in dataset.data["categories"]), default=0),
    )


def cityscapes_truth(annotations: Path) -> SemanticTruth:
    """Cityscapes' 19 classes, from the labelIds files under `annotations` (gtFine/<split>)."""

    def ground_truth(image: dict) -> np.ndarray:
        ids = label_ids(annotations, image["file_name"], (image["height"], image["width"]))
        return to_train_ids(ids).astype(np.int64)

    return SemanticTruth(
        categories=TRAIN_CATEGORIES,
        background=False,
        unmapped=IGNORE_TRAIN_ID,
        ground_truth=ground_truth,
        png_values=to_label_ids,
        png_largest=MAX_LABEL_ID,
    )
