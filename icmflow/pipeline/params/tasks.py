"""Task entries: `tasks.<name>` of params.yaml, the detectors and segmenters that read images.

A task model comes from a local weights file (`weights`), or is trained in the pipeline on the
original images of a dataset (`train`, stage `task@<name>`: the demo's, since the sample has no
pretrained detector). Every task reads the original and every coded `encode.split`
(`infer@<source>-<task>`); `finetune` lists the codecs whose coded `encode.train_split` it is
fine-tuned on (`finetune@<codec>-<task>`, scored on the same codec's coded `encode.split`).
Backends are checked against their registry by `registered` (it imports them). Kind
`foreground` is foreground extraction (paper 004): a segmenter with one sigmoid output whose
ground truth is every annotated object (the union of the instances' masks), scored by MAE.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from icmflow.pipeline.params.sections import Section

ORIGINAL = "original"
"""The source of `infer@original-<task>`: the uncompressed images (no codec may be so named)."""


class TaskTraining(Section):
    """Training the task model on original images (ultralytics: from an architecture YAML)."""

    dataset: str = "sample"
    split: str = "train"
    model: str | None = Field(None, description="architecture to start from, e.g. yolov8n.yaml")
    epochs: int = Field(gt=0)
    batch_size: int = Field(8, gt=0)
    lr: float | None = Field(None, gt=0, description="null: the backend's default")
    seed: int = 0
    options: dict[str, Any] = Field(
        default_factory=dict, description="the backend trainer's own arguments"
    )


class TaskFinetune(Section):
    codecs: list[str] = Field(min_length=1, description="codec entries to fine-tune on")
    epochs: int = Field(gt=0)
    batch_size: int = Field(8, gt=0)
    lr: float | None = Field(None, gt=0, description="null: the backend's default")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the backend trainer's own arguments"
    )


class TaskEntry(Section):
    kind: Literal["detection", "instance_segmentation", "semantic_segmentation", "foreground"]
    backend: str = Field(
        description="a registered task backend: ultralytics | torchvision | yolov5"
    )
    weights: str | None = Field(None, description="a local weights file (never downloaded)")
    train: TaskTraining | None = None
    input_size: int = Field(640, gt=0, description="the side images are resized to")
    classes: dict[int, int] | None = Field(
        None, description="dataset category id -> model class; null: matched by name"
    )
    device: str = "cpu"
    options: dict[str, Any] = Field(default_factory=dict, description="backend settings")
    finetune: TaskFinetune | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TaskEntry:
        if (self.weights is None) == (self.train is None):
            raise ValueError("give exactly one of `weights` (a local file) and `train`")
        if self.kind == "foreground" and self.classes is not None:
            raise ValueError(
                "kind foreground takes no `classes`: every annotated object is foreground"
            )
        return self
