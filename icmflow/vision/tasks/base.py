"""Task models: detectors and segmenters that read (coded) images, behind one interface.

A backend (ultralytics, torchvision, ...) is one registered module: it loads a model from a
local weights file (`load`), and trains or fine-tunes one on a dataset (`train`). Predictions
are in the model's own class indices and the original image's pixels; mapping classes to a
dataset's categories and scoring are `icmflow.tasks`' job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from icmflow.core.registry import Registry

TaskKind = Literal["detection", "instance_segmentation", "semantic_segmentation", "foreground"]
"""`foreground`: foreground extraction (paper 004): every annotated object against the
background, a probability per pixel (a segmenter with one sigmoid output)."""


@dataclass(frozen=True)
class TaskModelSpec:
    """What a backend builds a task model from (a params `tasks:` entry, resolved)."""

    kind: TaskKind
    weights: Path
    """A local file (never downloaded). Backends say which suffixes they read."""
    input_size: int
    """The side images are resized to (letterboxed for YOLO; shorter side for R-CNNs)."""
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    """Backend-specific settings (e.g. torchvision's `arch`, `num_classes`; `conf`, `max_det`)."""


@dataclass
class Detections:
    """One image's detections: boxes (n, 4) as x0, y0, x1, y1 in pixels, scores (n,), model
    classes (n,) and, for instance segmentation, one COCO RLE per detection."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: list[dict] | None = None


Prediction = Detections | np.ndarray
"""Detections; for semantic segmentation an (H, W) int array of model classes; for foreground
extraction an (H, W) float32 array of foreground probabilities in [0, 1]."""


class TaskModel(ABC):
    """A loaded model: `predict` takes RGB uint8 images (H, W, 3) of any sizes."""

    kind: TaskKind
    class_names: dict[int, str]
    """Model class index -> name."""

    @abstractmethod
    def predict(self, images: list[np.ndarray]) -> list[Prediction]: ...


@dataclass(frozen=True)
class TrainingData:
    """A dataset to train on: `coco`, a prepared COCO JSON (icmflow's schema:
    `PreparedDataset`) of the training split; `val_coco` likewise for validation during
    training (may be None). Backends write the layout their library reads from them."""

    coco: Path
    val_coco: Path | None = None


@dataclass(frozen=True)
class TrainSettings:
    """How long and how a task model trains; `initial` None trains from `model` (an
    architecture config such as `yolov8n.yaml`) with random weights."""

    epochs: int
    batch_size: int
    lr: float | None = None
    seed: int = 0
    initial: Path | None = None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class TaskBackend(ABC):
    """Loads and trains task models of one library."""

    kinds: frozenset[TaskKind]

    @abstractmethod
    def load(self, spec: TaskModelSpec) -> TaskModel:
        """The model in `spec.weights`; `CheckpointError` naming the file when it is missing
        or does not hold a model of `spec.kind`."""

    @abstractmethod
    def train(
        self, spec: TaskModelSpec, data: TrainingData, settings: TrainSettings, out: Path
    ) -> Path:
        """Train (or fine-tune from `settings.initial`) and write the weights file under `out`;
        returns its path, which `load` reads with `spec.weights` set to it."""


TASK_BACKENDS: Registry[TaskBackend] = Registry("task backend")
