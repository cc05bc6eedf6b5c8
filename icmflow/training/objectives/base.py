"""What a training objective is: named loss terms from the codec's output and the batch.

As CompressAI's criteria (`compressai/losses/rate_distortion.py`, registered with
`register_criterion`), an objective is a module that returns a dict of tensors: `loss` (what is
minimised) first, then any other terms worth logging; the trainer logs and plots every term it
gets and knows nothing of any particular objective. Objectives are registered by name in
`OBJECTIVES` and built from a codec entry as `cls(lmbda=..., **objective_args)`.

A batch is a dict of tensors: `x` (N×3×H×W images in [0, 1]) and whatever the objective declares
in `mask_kinds` (N×1×H×W binary masks of those kinds, e.g. `object`), and, when its
`ground_truth` names a kind of targets, the crops' annotations under `targets`
(`icmflow.training.targets`). An objective may hold
modules of its own (a frozen teacher, a training-only branch); its parameters that require
gradients are trained with the codec's main optimiser and saved in the resumable state, never in
the codec's checkpoint.

Scale: CompressAI's, L = R + λ·255²·D with images in [0, 1] and R in bits per pixel.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from icmflow.core.registry import Registry
from icmflow.vision.tasks.differentiable import TargetKind

Batch = dict[str, torch.Tensor]


def rate_bpp(output: dict, x: torch.Tensor) -> torch.Tensor:
    """Estimated bits per pixel of all latents: −Σ log2 likelihoods / (N·H·W)."""
    n, _, h, w = x.shape
    total = sum(torch.log(likelihoods).sum() for likelihoods in output["likelihoods"].values())
    return total / (-math.log(2) * n * h * w)


class Objective(nn.Module):
    """Base class: `forward(output, batch)` returns `{"loss": ..., other terms}`."""

    mask_kinds: ClassVar[tuple[str, ...]] = ()
    """Mask stores (`data/masks/<dataset>/<kind>`) whose masks the batches must carry."""
    partial_steps: bool = False
    """True when some steps' losses leave trainable parameters without gradients (a warm-up on
    some terms): under DDP the trainer then has it look for unused parameters every step."""

    def __init__(self, lmbda: float):
        super().__init__()
        self.lmbda = lmbda
        self.ground_truth: TargetKind | None = None
        """The ground-truth targets the batches must carry (None: none)."""

    def bind(self, model: nn.Module) -> None:
        """Called once with the codec before training (e.g. to hook its layers); no-op here."""

    def begin_step(self, step: int, steps: int) -> None:
        """Called by the trainer before each training step `step` (1 … `steps`, also the steps
        of a resumed run, which start after the saved one): an objective whose loss changes
        over training (a warm-up) keeps its progress from here. No-op here."""

    def checkpoint_extra(self) -> dict:
        """What the codec's checkpoint keeps of this objective (under `icmflow`): nothing, but
        for objectives whose trained modules the codec is used with."""
        return {}

    def forward(self, output: dict, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
