"""The human layer's objective of scalable coding (paper 001, eq. 3).

`scalable`: L = R(ya) + R(za) + λ·255²·MSE(x, x̂), x̂ the human image decoded from the fused
latent (or, for the DC model, the machine image plus the decoded residual). The rate counts
the human layer's latents only: the machine layer is frozen and its bits are spent anyway.
`machine_bpp`, the machine layer's estimated rate, is logged beside it (it stays constant).
"""

from __future__ import annotations

import torch

from icmflow.training.objectives.base import OBJECTIVES, Batch, rate_bpp
from icmflow.training.objectives.distortion import MeanSquaredError


@OBJECTIVES.register("scalable")
class ScalableMSE(MeanSquaredError):
    def forward(self, output: dict, batch: Batch) -> dict[str, torch.Tensor]:
        terms = super().forward(output, batch)
        machine = {"likelihoods": output["machine_likelihoods"]}
        return {**terms, "machine_bpp": rate_bpp(machine, batch["x"]).detach()}
