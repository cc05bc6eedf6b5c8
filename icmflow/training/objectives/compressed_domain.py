"""The compressed-domain objective (paper 004, Sun et al.): the codec trained with its primary
task's branch on the latent (`icmflow.codecs.compressed_domain`).

L = λ1·L_task + λ2·MSE(F_student, F_teacher) + λ·255²·MSE(x, x̂) + R (eqs. 3–4; λ3 on
CompressAI's scale, λ4 = 1), with `task_weight` λ1, `kd_weight` λ2 and, when > 0,
`machine_rate_weight` times the selected channels' bpp (what teaches the gate to drop channels).
The first `kd_warmup` fraction of the steps train on λ2·L_KD alone (the paper: "about 10 % of
the total number of iterations"); every term is logged in those steps too.
`task` is the task network, a torchvision DeepLabV3 or Faster R-CNN on a ResNet: its frozen copy
is the teacher (its stem on x gives F_teacher) and the target source for `targets: model`, and a
trainable copy of its remaining stages and head is the student's tail after the gate and
the transform. The targets are the crops' annotations by default (`targets: ground-truth`, as
the paper trains on Cityscapes and COCO labels).

The branch (gate, transform, tail) is trained with the codec and kept in its checkpoint
(`checkpoint_extra`: the machine bitstreams and their predictions need it); the frozen network
is not (it is loaded from the task's weights).

`compressed-domain-secondary` trains a secondary task (eq. 6): L = SG(L_m; φ, φ_h), the branch
of its task alone on a trained primary codec's latent (`FrozenCodec`: nothing of the codec
trains, its quantiles included, and ŷ is rounded as its bitstreams decode it), with the same
arguments (λ1, λ2, `machine_rate_weight`, `kd_warmup`, `targets`). `gate`: `own` (default: a
gate of its own, as Fig. 2's gate module per task; its machine bitstream holds the channels it
keeps) or `primary` (the primary branch's trained gate, frozen: its machine bitstreams are the
primary's, byte for byte, at the primary's machine rate; the stage passes that gate's state as
`primary_gate`).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from compressai.models import CompressionModel

from icmflow.codecs.compressed_domain import (
    TASK_BRANCH,
    FrozenCodec,
    TaskBranch,
    TaskTail,
    check_latent_codec,
    machine_loss,
    primary_loss,
    task_tail,
)
from icmflow.training.objectives.auxiliary import (
    LatentHook,
    TargetSource,
    TaskLossObjective,
    latent_channels,
)
from icmflow.training.objectives.base import OBJECTIVES, Batch
from icmflow.vision.tasks.differentiable import TaskLoss, rcnn_targets


@OBJECTIVES.register("compressed-domain")
class CompressedDomainObjective(TaskLossObjective):
    """Eq. 4 of paper 004 on a bmshj2018 or mbt2018-mean hyperprior (module doc)."""

    def __init__(
        self,
        lmbda: float,
        *,
        task: TaskLoss,
        task_options: dict | None = None,
        targets: TargetSource = "ground-truth",
        task_weight: float = 1.0,
        kd_weight: float = 1.0,
        machine_rate_weight: float = 0.0,
        kd_warmup: float = 0.0,
    ):
        super().__init__(lmbda, task=task, task_options=task_options, targets=targets)
        if not 0 <= kd_warmup < 1:
            raise ValueError(f"kd_warmup {kd_warmup}: the fraction of steps on L_KD, in [0, 1)")
        self.kd_warmup, self.kd_only = kd_warmup, False
        self.partial_steps = kd_warmup > 0  # the warm-up's loss misses g_s and the task head
        self.weights = {
            "task_weight": task_weight,
            "kd_weight": kd_weight,
            "machine_rate_weight": machine_rate_weight,
        }
        self.branch: TaskBranch | None = None
        self._teacher: tuple[TaskTail, ...] = ()  # not a submodule: frozen, not saved
        self._latent = LatentHook(self)

    def bind(self, model: CompressionModel) -> None:
        """Build the branch on `model`'s latent; capture what `model.g_s` receives."""
        check_latent_codec(model)
        foreground = self.task.target_kind == "foreground"
        student = copy.deepcopy(self.task.model).requires_grad_(True)
        self.branch = TaskBranch(latent_channels(model), task_tail(student, foreground=foreground))
        self._teacher = (task_tail(self.task.model, foreground=foreground),)
        self._latent.attach(model)

    def begin_step(self, step: int, steps: int) -> None:
        self.kd_only = step <= int(self.kd_warmup * steps)

    def forward(self, output: dict, batch: Batch) -> dict[str, torch.Tensor]:
        x, latent = batch["x"], self._latent.take()
        assert self.branch is not None
        targets = self.targets_of(batch)
        if isinstance(targets, list):  # boxes: what torchvision's detection heads read
            targets = rcnn_targets(targets)
        branch = self.branch(latent, tuple(x.shape[-2:]), targets)
        teacher = self._teacher[0].to(x.device)
        terms = primary_loss({**output, **branch}, x, teacher, self.lmbda, **self.weights)
        if self.kd_only:
            terms["loss"] = self.weights["kd_weight"] * terms["kd"]
        kept = branch["keep"].mean()
        return {**terms, "kept_fraction": kept}

    def checkpoint_extra(self) -> dict:
        assert self.branch is not None, "bind(model) first"
        state = {k: v.detach().cpu() for k, v in self.branch.state_dict().items()}
        return {TASK_BRANCH: state}


@OBJECTIVES.register("compressed-domain-secondary")
class CompressedDomainSecondary(CompressedDomainObjective):
    """Eq. 6 of paper 004: a secondary task's L_m (eq. 3, and the rate of its gate's channels
    when `machine_rate_weight` > 0) on a `FrozenCodec`'s latent (module doc)."""

    def __init__(
        self,
        lmbda: float,
        *,
        task: TaskLoss,
        task_options: dict | None = None,
        targets: TargetSource = "ground-truth",
        task_weight: float = 1.0,
        kd_weight: float = 1.0,
        machine_rate_weight: float = 0.0,
        kd_warmup: float = 0.0,
        gate: Literal["own", "primary"] = "own",
        primary_gate: dict[str, torch.Tensor] | None = None,
    ):
        if gate not in ("own", "primary"):
            raise ValueError(f"gate {gate!r}: own (a gate of its own) or primary")
        if (gate == "primary") != (primary_gate is not None):
            raise ValueError("gate primary reads the primary branch's gate (primary_gate), own not")
        super().__init__(
            lmbda,
            task=task,
            task_options=task_options,
            targets=targets,
            task_weight=task_weight,
            kd_weight=kd_weight,
            machine_rate_weight=machine_rate_weight,
            kd_warmup=kd_warmup,
        )
        self.gate, self._primary_gate = gate, primary_gate

    def bind(self, model: CompressionModel) -> None:
        """Build the branch on the frozen codec's latent (no hook: `model` returns ŷ)."""
        if not isinstance(model, FrozenCodec):
            raise TypeError("a secondary task trains on a FrozenCodec (the primary, fixed)")
        foreground = self.task.target_kind == "foreground"
        student = copy.deepcopy(self.task.model).requires_grad_(True)
        channels = latent_channels(model.codec)
        self.branch = TaskBranch(channels, task_tail(student, foreground=foreground))
        self._teacher = (task_tail(self.task.model, foreground=foreground),)
        if self._primary_gate is not None:
            self.branch.gate.load_state_dict(self._primary_gate)
            self.branch.gate.freeze()

    def forward(self, output: dict, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch["x"]
        assert self.branch is not None
        targets = self.targets_of(batch)
        if isinstance(targets, list):
            targets = rcnn_targets(targets)
        branch = self.branch(output["y_hat"], tuple(x.shape[-2:]), targets)
        teacher = self._teacher[0].to(x.device)
        terms = machine_loss({**output, **branch}, x, teacher, **self.weights)
        if self.kd_only:
            terms["loss"] = self.weights["kd_weight"] * terms["kd"]
        return {**terms, "kept_fraction": branch["keep"].mean()}
