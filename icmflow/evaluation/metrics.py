"""Per-image quality of decoded images: PSNR of the whole image, of the object region, MS-SSIM.

All metrics compare 8-bit RGB pixels with peak value 255. The object-region PSNR (the object
region learning paper, Fig. 8) averages the squared error over the mask's pixels only (all three
channels); it is undefined (NaN) for an image without objects.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim

MSSSIM_MIN_SIDE = 161
"""MS-SSIM's five scales with an 11-pixel window need both sides above 160 pixels."""


def mse(original: np.ndarray, decoded: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over all pixels and channels, or over the pixels where `mask` is set."""
    diff = original.astype(np.float64) - decoded.astype(np.float64)
    squared = diff * diff
    if mask is None:
        return float(squared.mean())
    if not mask.any():
        return math.nan
    return float(squared[mask].mean())


def psnr(mse_value: float) -> float:
    """PSNR in dB for 8-bit images; identical images give +inf, an undefined MSE gives NaN."""
    if math.isnan(mse_value):
        return math.nan
    if mse_value == 0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse_value)


def msssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM on RGB with data range 255; NaN when a side is under `MSSSIM_MIN_SIDE` pixels."""
    if min(original.shape[:2]) < MSSSIM_MIN_SIDE:
        return math.nan

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double()

    return float(ms_ssim(tensor(original), tensor(decoded), data_range=255.0))


def image_metrics(original: np.ndarray, decoded: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    if original.shape != decoded.shape:
        raise ValueError(f"decoded image is {decoded.shape}, original {original.shape}")
    return {
        "psnr": psnr(mse(original, decoded)),
        "object_psnr": psnr(mse(original, decoded, mask)),
        "object_fraction": float(mask.mean()),
        "ms_ssim": msssim(original, decoded),
    }
