"""Task-driven objectives: a frozen recognition model's task loss on the decoded image, and the
auxiliary-loss encoder (Iino et al., "Improving image coding for machines through optimizing
encoder via auxiliary loss"):

- `task-loss` (their eq. 4): L = R + λ·E(y, ŷ);
- `aux-loss` (eq. 5): L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux)};
- `aux-loss-image` (eq. 6): L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux) + β·MSE(x, x̂)}, β = 1 in the
  paper (MSE on images in [0, 1]).

R is bits per pixel; E is the task loss of a frozen recognition model (a detector or segmenter:
`icmflow.vision.tasks.differentiable.TaskLoss`) on the decoded image x̂; the target y is that
model's own predictions on the original image x (`targets: model`, the default: pseudo-labels,
as the paper does after Yamazaki et al.), or the crop's annotations (`targets: ground-truth`:
boxes or a class map in the model's classes, `icmflow.training.targets`).
ŷ_aux is the output of the auxiliary branch (`icmflow.codecs.aux_branch`), fed from the
quantised latent that the codec's synthesis transform `g_s` receives: `bind(model)` hooks
`g_s` (a forward pre-hook) to capture it, so the branch's loss reaches the encoder and the
entropy model, never the decoder. The branch and its head are this objective's own trainable
parameters: trained with the codec and saved in the resumable training state, never in the
codec's checkpoint. The frozen model is left out of that state (it is loaded from its file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from compressai.models import CompressionModel
from torch import nn

from icmflow.codecs.aux_branch import PAPER_WIDTHS, STRIDES, AuxiliaryBackbone, Backbone
from icmflow.training.objectives.base import OBJECTIVES, Batch, Objective, rate_bpp
from icmflow.training.targets import TARGETS
from icmflow.vision.tasks.differentiable import BoxTargets, Targets, TaskLoss

TargetSource = Literal["model", "ground-truth"]

FROZEN = "task."
"""State-dict prefix of the frozen model, which the training state does not carry."""


def latent_channels(model: CompressionModel) -> int:
    """Channels of the latent `model.g_s` decodes: those of its first convolution."""
    for module in model.g_s.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            return module.in_channels
    raise ValueError(f"{type(model).__name__}.g_s has no convolution to read its channels from")


class LatentHook:
    """A forward pre-hook on a codec's `g_s` that keeps the latent it receives while `owner`
    (the objective) is in train mode; `take()` hands it over once."""

    def __init__(self, owner: nn.Module):
        self.owner, self.latent, self.handle = owner, None, None

    def attach(self, model: CompressionModel) -> None:
        if self.handle is not None:
            self.handle.remove()
        self.handle = model.g_s.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if self.owner.training:
            self.latent = args[0]

    def take(self) -> torch.Tensor:
        if self.latent is None:
            raise RuntimeError(
                f"{type(self.owner).__name__}: call bind(model) before training, and run the "
                "model in train mode, so that the latent before its decoder is captured"
            )
        latent, self.latent = self.latent, None
        return latent


@OBJECTIVES.register("task-loss")
class TaskLossObjective(Objective):
    """L = R + λ·E(y, ŷ) (eq. 4); `task` is the frozen recognition model, `task_options` its
    settings (`TaskLoss.configure`: e.g. `conf`, the pseudo-labels' score threshold), `targets`
    where y comes from (module doc)."""

    def __init__(
        self,
        lmbda: float,
        *,
        task: TaskLoss,
        task_options: dict | None = None,
        targets: TargetSource = "model",
    ):
        super().__init__(lmbda)
        if not isinstance(task, TaskLoss):
            raise TypeError(f"objective {type(self).__name__} needs a TaskLoss, got {task!r}")
        if targets not in ("model", "ground-truth"):
            raise ValueError(f"targets {targets!r}: model or ground-truth")
        task.configure(**(task_options or {}))
        self.task = task
        if targets == "ground-truth":
            self.ground_truth = task.target_kind

    def targets_of(self, batch: Batch) -> Targets:
        """y: the batch's ground truth, or the frozen model's predictions on x."""
        if self.ground_truth is None:
            return self.task.targets(batch["x"])
        found = batch[TARGETS]
        if self.ground_truth == "boxes":
            return [BoxTargets(t[:, :4], t[:, 4].long()) for t in found]
        return found

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        prefix = kwargs.get("prefix", "") + FROZEN
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if not k.startswith(prefix))

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        frozen = {FROZEN + k: v for k, v in self.task.state_dict().items()}
        return super().load_state_dict({**frozen, **state_dict}, strict, assign)

    def task_terms(self, output: dict, batch: Batch) -> tuple[torch.Tensor, dict]:
        """E(y, ŷ) + the objective's other terms in braces, and the terms to log."""
        targets = self.targets_of(batch)
        task = self.task(output["x_hat"], targets)
        return task, {"task_loss": task, "targets": self._count(targets, batch["x"])}

    def _count(self, targets: Any, x: torch.Tensor) -> torch.Tensor:
        return x.new_tensor(self.task.count(targets))

    def forward(self, output: dict, batch: Batch) -> dict[str, torch.Tensor]:
        bpp = rate_bpp(output, batch["x"])
        inner, terms = self.task_terms(output, batch)
        return {"loss": bpp + self.lmbda * inner, "bpp": bpp, **terms}


@OBJECTIVES.register("aux-loss")
class AuxiliaryLoss(TaskLossObjective):
    """L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux)} (eq. 5). `branch_widths`: channels of the
    upsampling blocks and conv2–conv5 (the paper's: 128, 128, 256, 256, 512); `branch_backbone`:
    `resnext` (Table 1's grouped bottlenecks of `branch_groups` groups, the detection branch) or
    `resnet` (Table 2's basic blocks, the segmentation branch)."""

    image_weight: ClassVar[float] = 0.0

    def __init__(
        self,
        lmbda: float,
        *,
        task: TaskLoss,
        task_options: dict | None = None,
        targets: TargetSource = "model",
        alpha: float = 0.5,
        branch_widths: Sequence[int] = PAPER_WIDTHS,
        branch_groups: int = 32,
        branch_backbone: Backbone = "resnext",
    ):
        super().__init__(lmbda, task=task, task_options=task_options, targets=targets)
        if branch_backbone not in ("resnext", "resnet"):
            raise ValueError(f"branch_backbone {branch_backbone!r}: resnext or resnet")
        self.alpha, self.widths, self.groups = alpha, tuple(branch_widths), branch_groups
        self.backbone: Backbone = branch_backbone
        self.branch: AuxiliaryBackbone | None = None
        self.head: nn.Module | None = None
        self._latent = LatentHook(self)

    def bind(self, model: CompressionModel) -> None:
        """Build the branch for `model`'s latent and capture what `model.g_s` receives."""
        self.branch = AuxiliaryBackbone(
            latent_channels(model), self.widths, self.groups, self.backbone
        )
        self.head = self.task.head(self.branch.channels, STRIDES)
        self._latent.attach(model)

    def task_terms(self, output: dict, batch: Batch) -> tuple[torch.Tensor, dict]:
        x, latent = batch["x"], self._latent.take()
        assert self.branch is not None and self.head is not None
        targets = self.targets_of(batch)
        task = self.task(output["x_hat"], targets)
        branch = self.head(self.branch(latent), targets, tuple(x.shape[-2:]))
        inner = task + self.alpha * branch
        terms = {"task_loss": task, "branch_loss": branch}
        if self.image_weight:
            mse = F.mse_loss(output["x_hat"], x)
            inner = inner + self.image_weight * mse
            terms["mse"] = mse
        return inner, {**terms, "targets": self._count(targets, x)}


@OBJECTIVES.register("aux-loss-image")
class AuxiliaryLossImage(AuxiliaryLoss):
    """Eq. 6: eq. 5 plus β·MSE(x, x̂) inside the braces (`image_weight` β, default 1)."""

    def __init__(self, lmbda: float, *, image_weight: float = 1.0, **kwargs: Any):
        super().__init__(lmbda, **kwargs)
        self.image_weight = image_weight
