"""Per-image quality of decoded images: PSNR of the whole image, of the object region, MS-SSIM.

All metrics compare 8-bit RGB pixels with peak value 255. The object-region PSNR (the object
region learning paper, Fig. 8) averages the squared error over the mask's pixels only (all three
channels); it is undefined (NaN) for an image without objects.

MS-SSIM is pytorch_msssim's `ms_ssim` (Wang et al.'s five scales and weights, an 11-pixel
Gaussian window of σ 1.5, K = (0.01, 0.03), its zero-padded 2×2 average pooling) computed here in
float64 with OpenCV's separable filter, only the terms each scale needs: about 6× faster on one
thread than pytorch_msssim in float64, equal to it within 1e-12 (`precise=True` calls
pytorch_msssim itself, as the evaluate stage did before). Float32 is not exact enough: the
variances E[x²] − E[x]² of 8-bit pixels lose up to 8e-7 of MS-SSIM on real photos.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from pytorch_msssim import MS_SSIM, ms_ssim

MSSSIM_MIN_SIDE = 161
"""MS-SSIM's five scales with an 11-pixel window need both sides above 160 pixels."""
MSSSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
WINDOW = MS_SSIM(data_range=255, channel=1).win.flatten().double().numpy()
"""pytorch_msssim's 11-tap Gaussian (σ 1.5), normalised in float32: its sum is 1 − 3e-8, and the
variances E[x²] − E[x]² are sensitive enough to that to shift MS-SSIM by up to 3e-6, so this is
that very window, not a float64 Gaussian."""
_RADIUS = WINDOW.size // 2


def squared_error(original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """Per-pixel, per-channel squared difference of two uint8 images, as exact integers."""
    diff = np.subtract(original, decoded, dtype=np.int32)
    return np.multiply(diff, diff, out=diff)


def mse(original: np.ndarray, decoded: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over all pixels and channels, or over the pixels where `mask` is set."""
    return masked_mean(squared_error(original, decoded), mask)


def masked_mean(squared: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The mean of `squared` (integers: the sum is exact), over `mask`'s pixels when given."""
    if mask is None:
        return int(squared.sum(dtype=np.int64)) / squared.size
    if not mask.any():
        return math.nan
    chosen = squared[mask]
    return int(chosen.sum(dtype=np.int64)) / chosen.size


def psnr(mse_value: float) -> float:
    """PSNR in dB for 8-bit images; identical images give +inf, an undefined MSE gives NaN."""
    if math.isnan(mse_value):
        return math.nan
    if mse_value == 0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse_value)


class Planes:
    """Named float64 work planes, reused from channel to channel, scale to scale and (held by
    a thread) image to image: a fresh array for every intermediate had the kernel zero about
    50 MB of new pages per COCO image, a third of the time."""

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """Plane `name` as a contiguous array of `shape` (contents undefined)."""
        size = shape[0] * shape[1]
        flat = self._flat.get(name)
        if flat is None or flat.size < size:
            flat = self._flat[name] = np.empty(size)
        return flat[:size].reshape(shape)


def _blur(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The Gaussian-weighted local mean of plane `x` (computed into `out`, x's shape), at valid
    positions only."""
    cv2.sepFilter2D(x, cv2.CV_64F, WINDOW, WINDOW, dst=out, borderType=cv2.BORDER_CONSTANT)
    return out[_RADIUS:-_RADIUS, _RADIUS:-_RADIUS]


def _pool(x: np.ndarray, planes: Planes, name: str) -> np.ndarray:
    """2×2 average pooling into plane `name`, an odd side zero-padded at both ends
    (`avg_pool2d` with padding side % 2, the padding counted in the average)."""
    (height, width), pad_h, pad_w = x.shape, x.shape[0] % 2, x.shape[1] % 2
    if pad_h or pad_w:
        padded = planes("padded", (height + 2 * pad_h, width + 2 * pad_w))
        padded[[0, -1]] = 0
        padded[:, [0, -1]] = 0
        padded[pad_h : pad_h + height, pad_w : pad_w + width] = x
        x = padded
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]  # floor: a last odd row or column out
    out = planes(name, (x.shape[0] // 2, x.shape[1] // 2))
    np.add(x[0::2, 0::2], x[0::2, 1::2], out=out)
    out += x[1::2, 0::2]
    out += x[1::2, 1::2]
    out *= 0.25
    return out


def _ssim_term(x: np.ndarray, y: np.ndarray, planes: Planes, *, luminance: bool) -> float:
    """The mean contrast-structure term of two planes, or with `luminance` their mean SSIM."""
    shape = x.shape
    mu1, mu2 = _blur(x, planes("mu1", shape)), _blur(y, planes("mu2", shape))
    first, second = planes("first", shape), planes("second", shape)
    np.multiply(x, x, out=first)
    first += np.multiply(y, y, out=second)
    sum_sq = _blur(first, planes("sum_sq", shape))  # E[x² + y²]
    cs = _blur(np.multiply(x, y, out=first), planes("cs", shape))  # E[xy]
    valid = mu1.shape
    mu_sq, mu_cross = planes("first", valid), planes("second", valid)  # products done with
    np.multiply(mu1, mu1, out=mu_sq)
    mu_sq += np.multiply(mu2, mu2, out=mu_cross)  # μ1² + μ2²
    np.multiply(mu1, mu2, out=mu_cross)
    cs -= mu_cross  # σ12
    cs *= 2
    cs += _C2
    sum_sq -= mu_sq  # σ1² + σ2²
    sum_sq += _C2
    cs /= sum_sq
    if luminance:
        mu_cross *= 2
        mu_cross += _C1
        mu_sq += _C1
        mu_cross /= mu_sq
        cs *= mu_cross
    return max(float(cs.mean()), 0.0)


def _channel_msssim(original: np.ndarray, decoded: np.ndarray, planes: Planes) -> float:
    """MS-SSIM of one channel (uint8 planes)."""
    x, y = planes("x0", original.shape), planes("y0", original.shape)
    np.copyto(x, original)
    np.copyto(y, decoded)
    terms = []
    for scale in range(len(MSSSIM_WEIGHTS)):
        last = scale == len(MSSSIM_WEIGHTS) - 1
        terms.append(_ssim_term(x, y, planes, luminance=last))
        if not last:
            turn = (scale + 1) % 2  # the other pair of planes
            x, y = _pool(x, planes, f"x{turn}"), _pool(y, planes, f"y{turn}")
    return float(np.prod(np.array(terms) ** MSSSIM_WEIGHTS))


def msssim(
    original: np.ndarray,
    decoded: np.ndarray,
    *,
    precise: bool = False,
    planes: Planes | None = None,
) -> float:
    """MS-SSIM on RGB with data range 255 (the mean of the channels'); NaN when a side is under
    `MSSSIM_MIN_SIDE` pixels. `precise`: pytorch_msssim's own `ms_ssim` in float64 (the
    reference, about 6× slower); `planes`: work planes to reuse (one set per thread)."""
    if min(original.shape[:2]) < MSSSIM_MIN_SIDE:
        return math.nan
    if precise:
        return _reference_msssim(original, decoded)
    planes = planes or Planes()
    channels = range(original.shape[2])
    return float(
        np.mean([_channel_msssim(original[..., c], decoded[..., c], planes) for c in channels])
    )


def _reference_msssim(original: np.ndarray, decoded: np.ndarray) -> float:
    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].double()

    return float(ms_ssim(tensor(original), tensor(decoded), data_range=255.0))


def image_metrics(
    original: np.ndarray,
    decoded: np.ndarray,
    mask: np.ndarray,
    *,
    precise: bool = False,
    planes: Planes | None = None,
) -> dict[str, float]:
    """PSNR, object-region PSNR, object fraction and MS-SSIM (`precise`, `planes`: see
    `msssim`)."""
    if original.shape != decoded.shape:
        raise ValueError(f"decoded image is {decoded.shape}, original {original.shape}")
    squared = squared_error(original, decoded)
    return {
        "psnr": psnr(masked_mean(squared)),
        "object_psnr": psnr(masked_mean(squared, mask)),
        "object_fraction": float(mask.mean()),
        "ms_ssim": msssim(original, decoded, precise=precise, planes=planes),
    }
