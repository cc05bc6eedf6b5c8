"""Rate–distortion objectives on pixels: plain MSE and the masked MSE of ICM.

- `mse`: L = R + λ·255²·MSE(x, x̂), CompressAI's `RateDistortionLoss`.
- `object`: L = R + λ·255²·MSE(x⊙m, x̂⊙m), m the binary object mask (Object-MSE, object-region
  learning paper, eqs. 4–5).
- `edge`: the same with m the binary SAM edge mask (SA-ICM).

Mask normalisation: the masked MSE is the mean over *all* pixels and channels of the masked
images, exactly MSE(x⊙m, x̂⊙m) as the paper writes it, not a mean over mask pixels. λ therefore
weighs an image fully covered by objects as the `mse` objective would, and an image with little
object area contributes little distortion. An image whose mask is empty contributes rate only:
the codec learns to spend as few bits as possible on it, the paper's intent for non-object
regions.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from icmflow.training.objectives.base import OBJECTIVES, Batch, Objective, rate_bpp

DISTORTION_SCALE = 255**2
"""CompressAI's λ scale: distortion on [0, 1] images, weighed as on 8-bit ones."""


@OBJECTIVES.register("mse")
class MeanSquaredError(Objective):
    def forward(self, output: dict, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch["x"]
        bpp = rate_bpp(output, x)
        distortion = F.mse_loss(output["x_hat"], x)
        loss = bpp + self.lmbda * DISTORTION_SCALE * distortion
        return {"loss": loss, "bpp": bpp, "mse": distortion}


class MaskedMeanSquaredError(Objective):
    """MSE(x⊙m, x̂⊙m) with m the batch's mask of kind `mask_kinds[0]`."""

    mask_kind: ClassVar[str]

    def forward(self, output: dict, batch: Batch) -> dict[str, torch.Tensor]:
        x, mask = batch["x"], batch[self.mask_kind]
        bpp = rate_bpp(output, x)
        distortion = F.mse_loss(output["x_hat"] * mask, x * mask)
        return {
            "loss": bpp + self.lmbda * DISTORTION_SCALE * distortion,
            "bpp": bpp,
            "masked_mse": distortion,
        }


@OBJECTIVES.register("object")
class ObjectMSE(MaskedMeanSquaredError):
    mask_kind = "object"
    mask_kinds = ("object",)


@OBJECTIVES.register("edge")
class EdgeMSE(MaskedMeanSquaredError):
    mask_kind = "edge"
    mask_kinds = ("edge",)
