"""Task-driven objectives: a frozen recognition model's task loss on the decoded image, and the
auxiliary-loss encoder (Iino et al., "Improving image coding for machines through optimizing
encoder via auxiliary loss"):

- `task-loss` (their eq. 4): L = R + λ·E(y, ŷ);
- `aux-loss` (eq. 5): L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux)};
- `aux-loss-image` (eq. 6): L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux) + β·MSE(x, x̂)}, β = 1 in the
  paper (MSE on images in [0, 1]).

R is bits per pixel; E is the task loss of a frozen recognition model (a detector or segmenter:
`icmflow.vision.tasks.differentiable.TaskLoss`) on the decoded image x̂; the target y is that
model's own predictions on the original image x (pseudo-labels, as the paper does after
Yamazaki et al.).
ŷ_aux is the output of the auxiliary branch (`icmflow.codecs.aux_branch`), fed from the
quantised latent that the codec's synthesis transform `g_s` receives: `bind(model)` hooks
`g_s` (a forward pre-hook) to capture it, so the branch's loss reaches the encoder and the
entropy model, never the decoder. The branch and its head are this objective's own trainable
parameters: trained with the codec and saved in the resumable training state, never in the
codec's checkpoint. The frozen model is left out of that state (it is loaded from its file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from compressai.models import CompressionModel
from torch import nn

from icmflow.codecs.aux_branch import PAPER_WIDTHS, STRIDES, AuxiliaryBackbone
from icmflow.training.objectives.base import OBJECTIVES, Batch, Objective, rate_bpp
from icmflow.vision.tasks.differentiable import TaskLoss

FROZEN = "task."
"""State-dict prefix of the frozen model, which the training state does not carry."""


def latent_channels(model: CompressionModel) -> int:
    """Channels of the latent `model.g_s` decodes: those of its first convolution."""
    for module in model.g_s.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            return module.in_channels
    raise ValueError(f"{type(model).__name__}.g_s has no convolution to read its channels from")


@OBJECTIVES.register("task-loss")
class TaskLossObjective(Objective):
    """L = R + λ·E(y, ŷ) (eq. 4); `task` is the frozen recognition model, `task_options` its
    settings (`TaskLoss.configure`: e.g. `conf`, the pseudo-labels' score threshold)."""

    def __init__(self, lmbda: float, *, task: TaskLoss, task_options: dict | None = None):
        super().__init__(lmbda)
        if not isinstance(task, TaskLoss):
            raise TypeError(f"objective {type(self).__name__} needs a TaskLoss, got {task!r}")
        task.configure(**(task_options or {}))
        self.task = task

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        prefix = kwargs.get("prefix", "") + FROZEN
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if not k.startswith(prefix))

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        frozen = {FROZEN + k: v for k, v in self.task.state_dict().items()}
        return super().load_state_dict({**frozen, **state_dict}, strict, assign)

    def task_terms(self, output: dict, batch: Batch) -> tuple[torch.Tensor, dict]:
        """E(y, ŷ) + the objective's other terms in braces, and the terms to log."""
        targets = self.task.targets(batch["x"])
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
    upsampling blocks and conv2–conv5 (the paper's: 128, 128, 256, 256, 512)."""

    image_weight: ClassVar[float] = 0.0

    def __init__(
        self,
        lmbda: float,
        *,
        task: TaskLoss,
        task_options: dict | None = None,
        alpha: float = 0.5,
        branch_widths: Sequence[int] = PAPER_WIDTHS,
        branch_groups: int = 32,
    ):
        super().__init__(lmbda, task=task, task_options=task_options)
        self.alpha, self.widths, self.groups = alpha, tuple(branch_widths), branch_groups
        self.branch: AuxiliaryBackbone | None = None
        self.head: nn.Module | None = None
        self._latent: torch.Tensor | None = None
        self._hook: Any = None

    def bind(self, model: CompressionModel) -> None:
        """Build the branch for `model`'s latent and capture what `model.g_s` receives."""
        if self._hook is not None:
            self._hook.remove()
        self.branch = AuxiliaryBackbone(latent_channels(model), self.widths, self.groups)
        self.head = self.task.head(self.branch.channels, STRIDES)
        self._hook = model.g_s.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        if self.training:
            self._latent = args[0]

    def task_terms(self, output: dict, batch: Batch) -> tuple[torch.Tensor, dict]:
        if self.branch is None or self.head is None or self._latent is None:
            raise RuntimeError(
                f"{type(self).__name__}: call bind(model) before training, and run the model "
                "in train mode, so that the latent before its decoder is captured"
            )
        x, latent = batch["x"], self._latent
        self._latent = None
        targets = self.task.targets(x)
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
