"""Per-image quality of decoded images: PSNR of the whole image, of the object region, MS-SSIM.

All metrics compare 8-bit RGB pixels with peak value 255. The object-region PSNR (the object
region learning paper, Fig. 8) averages the squared error over the mask's pixels only (all three
channels); it is undefined (NaN) for an image without objects.

MS-SSIM is pytorch_msssim's `ms_ssim` (Wang et al.'s five scales and weights, its 11-pixel
Gaussian window of σ 1.5, K = (0.01, 0.03), its zero-padded 2×2 average pooling) computed here in
float64 with OpenCV's separable filter, four filtered planes per scale and channel, the luminance
term at the last scale only: about 9× less CPU than pytorch_msssim in float64 on one thread, and
equal to it within 1e-13 on Kodak and COCO photos (`precise=True` calls pytorch_msssim itself,
as the evaluate stage did before). Float32 is not exact enough: the variances E[x²] − E[x]² of
8-bit pixels cancel, and MS-SSIM moved by up to 8e-7 on the same photos.
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
    """2×2 average pooling into plane `name` (rows first: contiguous reads), an odd side
    zero-padded at both ends (`avg_pool2d` with padding side % 2, the padding counted in the
    average)."""
    (height, width), pad_h, pad_w = x.shape, x.shape[0] % 2, x.shape[1] % 2
    if pad_h or pad_w:
        padded = planes("padded", (height + 2 * pad_h, width + 2 * pad_w))
        padded[[0, -1]] = 0
        padded[:, [0, -1]] = 0
        padded[pad_h : pad_h + height, pad_w : pad_w + width] = x
        x = padded
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]  # floor: a last odd row or column out
    rows = np.add(x[0::2], x[1::2], out=planes("rows", (x.shape[0] // 2, x.shape[1])))
    out = np.add(rows[:, 0::2], rows[:, 1::2], out=planes(name, (rows.shape[0], x.shape[1] // 2)))
    out *= 0.25
    return out


def _ssim_term(s: np.ndarray, d: np.ndarray, planes: Planes, *, luminance: bool) -> float:
    """The mean contrast-structure term of two planes x and y given as their sum `s` and
    difference `d`, or with `luminance` their mean SSIM.

    With s = x + y and d = x − y: var s = σ1² + σ2² + 2σ12, var d = σ1² + σ2² − 2σ12,
    E[s]² = μ1² + μ2² + 2μ1μ2 and E[d]² = μ1² + μ2² − 2μ1μ2, so SSIM's terms are
    cs = (var s − var d + 2·C2) / (var s + var d + 2·C2) and
    l = (E[s]² − E[d]² + 2·C1) / (E[s]² + E[d]² + 2·C1): four filtered planes, not five.
    """
    shape = s.shape
    mean_s, mean_d = _blur(s, planes("mean_s", shape)), _blur(d, planes("mean_d", shape))
    square = planes("square", shape)
    var_s = _blur(np.multiply(s, s, out=square), planes("var_s", shape))  # E[s²]
    var_d = _blur(np.multiply(d, d, out=square), planes("var_d", shape))  # E[d²]
    mean_s *= mean_s  # E[s]²
    mean_d *= mean_d  # E[d]²
    var_s -= mean_s
    var_d -= mean_d
    cs = np.subtract(var_s, var_d, out=planes("square", mean_s.shape))
    cs += 2 * _C2
    var_s += var_d
    var_s += 2 * _C2
    cs /= var_s
    if luminance:
        lum = np.subtract(mean_s, mean_d, out=var_d)
        lum += 2 * _C1
        mean_s += mean_d
        mean_s += 2 * _C1
        lum /= mean_s
        cs *= lum
    return max(float(cs.mean()), 0.0)


def _channel_msssim(original: np.ndarray, decoded: np.ndarray, planes: Planes) -> float:
    """MS-SSIM of one channel (contiguous uint8 planes)."""
    s = np.add(original, decoded, out=planes("s0", original.shape), dtype=np.float64)
    d = np.subtract(original, decoded, out=planes("d0", original.shape), dtype=np.float64)
    terms = []
    for scale in range(len(MSSSIM_WEIGHTS)):
        last = scale == len(MSSSIM_WEIGHTS) - 1
        terms.append(_ssim_term(s, d, planes, luminance=last))
        if not last:  # pooling is linear: the pooled sum and difference
            turn = (scale + 1) % 2  # the other pair of planes
            s, d = _pool(s, planes, f"s{turn}"), _pool(d, planes, f"d{turn}")
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
    reference, about 9× slower); `planes`: work planes to reuse (one set per thread)."""
    if min(original.shape[:2]) < MSSSIM_MIN_SIDE:
        return math.nan
    if precise:
        return _reference_msssim(original, decoded)
    planes = planes or Planes()
    channels = zip(*(cv2.split(np.ascontiguousarray(a)) for a in (original, decoded)), strict=True)
    return float(np.mean([_channel_msssim(x, y, planes) for x, y in channels]))


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
