"""Rate–distortion losses on CompressAI's scale: L = R + λ·255²·D, images in [0, 1].

- `mse`: D = MSE(x, x̂), CompressAI's `RateDistortionLoss`.
- `object`: D = MSE(x⊙m, x̂⊙m) with m the binary object mask (Object-MSE, object-region
  learning paper, eq. 4-5).

Mask normalisation: the masked MSE is the mean over *all* pixels and channels of the masked
images, exactly MSE(x⊙m, x̂⊙m) as the paper writes it, not a mean over mask pixels. λ therefore
weighs an image fully covered by objects as the `mse` loss would, and an image with little object
area contributes little distortion. An image whose mask is empty contributes rate only (D = 0):
the codec learns to spend as few bits as possible on it, which is the paper's intent for
non-object regions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RateDistortionLoss(nn.Module):
    def __init__(self, lmbda: float, *, masked: bool):
        super().__init__()
        self.lmbda, self.masked = lmbda, masked

    def forward(
        self, output: dict, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        n, _, h, w = target.shape
        bpp = sum(
            torch.log(likelihoods).sum() for likelihoods in output["likelihoods"].values()
        ) / (-math.log(2) * n * h * w)
        x_hat = output["x_hat"]
        if self.masked:
            if mask is None:
                raise ValueError("a masked loss needs the mask")
            distortion = F.mse_loss(x_hat * mask, target * mask)
        else:
            distortion = F.mse_loss(x_hat, target)
        loss = bpp + self.lmbda * 255**2 * distortion
        return {"loss": loss, "bpp": bpp, "mse": distortion}
