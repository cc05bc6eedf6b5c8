"""Tiny codecs and randomly initialised torchvision task models for task-driven objectives."""

from __future__ import annotations

from pathlib import Path

import torch
from compressai.models import CompressionModel

from icmflow.codecs.architectures import create_model
from icmflow.vision.tasks.base import TaskModelSpec
from icmflow.vision.tasks.differentiable import RcnnTaskLoss, load_task_loss
from tests.helpers.builders import random_task_weights

TASKS = {
    "semantic_segmentation": ("deeplabv3_resnet18", "class_map"),
    "detection": ("fasterrcnn_resnet18_fpn", "boxes"),
}
"""Each task kind's tiny torchvision architecture and the ground truth it trains on."""


def codec() -> CompressionModel:
    """An untrained hyperprior (N=16, M=24, seed 0)."""
    return create_model("bmshj2018-hyperprior", seed=0, N=16, M=24)


def frozen_state(task) -> dict[str, torch.Tensor]:
    """A copy of a task loss's model weights, to check that training left them unchanged."""
    return {k: v.clone() for k, v in task.model.state_dict().items()}


def task_spec(kind: str, tmp_path: Path) -> TaskModelSpec:
    """A `kind` model of `TASKS` with 4 classes and random weights written under `tmp_path`."""
    return random_task_weights(
        TaskModelSpec(
            kind=kind,
            weights=tmp_path / "task.pt",
            input_size=64,
            options={"arch": TASKS[kind][0], "num_classes": 4},
        )
    )


def random_rcnn(folder: Path) -> RcnnTaskLoss:
    """A Faster R-CNN task loss (MobileNetV3, 2 classes + background, conf 0), random weights
    written under `folder`."""
    spec = TaskModelSpec(
        kind="detection",
        weights=folder / "weights.pt",
        input_size=64,
        options={"arch": "fasterrcnn_mobilenet_v3_large_fpn", "num_classes": 3, "conf": 0.0},
    )
    return load_task_loss("torchvision", random_task_weights(spec), conf=0.0)
