"""ROI-based bit allocation on a trained codec (Ahonen et al., MMSP 2023): the auxiliary-loss
paper's baseline, with the ground-truth object mask as the region of interest.

As that paper describes it, the binarised ROI mask selects latent elements, and those outside
it are divided by a quantisation factor QF > 1 before quantisation: their variance shrinks, the
hyperprior predicts smaller scales for them, and they take fewer bits. The latent is the
analysis transform's output y (the one the entropy model quantises and codes), so the division
wraps `g_a` and the decoder multiplies ŷ back by QF outside the ROI before `g_s`; the codec's own
`compress`/`decompress` run unchanged in between (any CompressAI model with `g_a`/`g_s`, TCM
included), under `icmflow.coding.learned`'s checks.

The decoder must know the ROI. The paper does not say how it gets there, so here the bitstream
carries it: a latent element is in the ROI when any pixel of the block it covers is (the
padded margin is not), and the latent-resolution map (1 bit per element, e.g. 40×64 for a
640×1024 image) is its first string: height and width (2 bytes each, little-endian), then the
row-major bits packed 8 per byte and deflated. It is part of the file, so bpp counts it.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from icmflow.coding.bitstream import pack, unpack
from icmflow.coding.image_codec import Coded
from icmflow.coding.learned import LearnedCodec, LearnedCodecSpec, check_decoded, read_bitstream
from icmflow.core.errors import BitstreamError

_ROI_HEADER = struct.Struct("<HH")
_TRANSFORMS = threading.Lock()
"""Wrapping a model's transforms is process-wide: one ROI coding at a time per process."""


def latent_roi(roi: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The latent elements (`size`, bool) whose block of the padded input holds a pixel of the
    H'×W' `roi` (nonzero: in the ROI): any ROI pixel marks its element."""
    return F.adaptive_max_pool2d(roi[None, None].float(), size)[0, 0] > 0


def scale_map(roi: torch.Tensor, qf: float) -> torch.Tensor:
    """1 in the ROI, QF outside it, as a 1×1×h×w tensor for a latent."""
    return torch.where(roi, 1.0, qf)[None, None]


def pack_roi(roi: np.ndarray) -> bytes:
    height, width = roi.shape
    return _ROI_HEADER.pack(height, width) + zlib.compress(np.packbits(roi).tobytes(), 9)


def unpack_roi(data: bytes) -> np.ndarray:
    try:
        height, width = _ROI_HEADER.unpack_from(data)
        bits = np.frombuffer(zlib.decompress(data[_ROI_HEADER.size :]), dtype=np.uint8)
    except (struct.error, zlib.error) as err:
        raise BitstreamError(f"the ROI map is damaged ({err})") from None
    if bits.size != -(-height * width // 8):
        raise BitstreamError(f"the ROI map holds {bits.size} bytes, not {height}×{width} bits")
    return np.unpackbits(bits, count=height * width).reshape(height, width).astype(bool)


class _RoiState:
    """The ROI of the image being coded: in pixels (encoder), at latent resolution (both)."""

    def __init__(self, pixels: torch.Tensor | None, latent: torch.Tensor | None):
        self.pixels, self.latent = pixels, latent


class _DividedAnalysis(nn.Module):
    """`g_a`, its output divided by QF outside the ROI (found from the pixels at y's size)."""

    def __init__(self, g_a: nn.Module, state: _RoiState, qf: float):
        super().__init__()
        self.g_a, self.state, self.qf = g_a, state, qf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.g_a(x)
        pixels = self.state.pixels
        if pixels is None:
            raise BitstreamError("no ROI given for the analysis transform")
        margin = (0, x.shape[-1] - pixels.shape[-1], 0, x.shape[-2] - pixels.shape[-2])
        self.state.latent = latent_roi(F.pad(pixels.float(), margin), tuple(y.shape[-2:]))
        return y / scale_map(self.state.latent, self.qf).to(y)


class _MultipliedSynthesis(nn.Module):
    """`g_s` of ŷ multiplied back by QF outside the ROI."""

    def __init__(self, g_s: nn.Module, state: _RoiState, qf: float):
        super().__init__()
        self.g_s, self.state, self.qf = g_s, state, qf

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        roi = self.state.latent
        if roi is None or tuple(roi.shape) != tuple(y_hat.shape[-2:]):
            found = None if roi is None else tuple(roi.shape)
            raise BitstreamError(f"the ROI map is {found}, the latent {tuple(y_hat.shape[-2:])}")
        return self.g_s(y_hat * scale_map(roi, self.qf).to(y_hat))


class RoiCodec:
    """A trained learned codec coding each image with its region of interest (`encode_region`);
    the bitstream carries the ROI, so `decode` needs no mask (QF is the codec's, like its
    checkpoint: decoding with another fails the pixel check)."""

    suffix = ".bin"

    def __init__(self, codec: LearnedCodec, qf: float):
        if qf < 1:
            raise ValueError(f"QF must be at least 1 (1: no change), got {qf}")
        self.codec, self.qf = codec, qf
        self.device = codec.device

    @contextmanager
    def _roi(
        self, pixels: torch.Tensor | None = None, latent: torch.Tensor | None = None
    ) -> Iterator[_RoiState]:
        model, state = self.codec.model, _RoiState(pixels, latent)
        with _TRANSFORMS:
            g_a, g_s = model.g_a, model.g_s
            model.g_a = _DividedAnalysis(g_a, state, self.qf)
            model.g_s = _MultipliedSynthesis(g_s, state, self.qf)
            try:
                yield state
            finally:
                model.g_a, model.g_s = g_a, g_s

    def encode_region(self, rgb: np.ndarray, roi: np.ndarray) -> Coded:
        """Code H×W×3 uint8 `rgb` with the H×W bool `roi` kept at the codec's quality."""
        if roi.shape != rgb.shape[:2]:
            raise ValueError(f"the ROI is {roi.shape}, the image {rgb.shape[:2]}")
        pixels = torch.from_numpy(np.asarray(roi, dtype=bool)).to(self.device)
        with self._roi(pixels=pixels) as state:
            coded = self.codec.encode(rgb)
        stream = unpack(coded.data)
        roi_map = pack_roi(state.latent.cpu().numpy())
        return Coded(pack(replace(stream, strings=(roi_map, *stream.strings))), coded.decoded)

    def decode(self, data: bytes, *, source: str = "bitstream", strict: bool = True) -> np.ndarray:
        stream = read_bitstream(data, source)
        if not stream.strings:
            raise BitstreamError(f"{source}: no ROI map: not an ROI codec's bitstream")
        try:
            roi = torch.from_numpy(unpack_roi(stream.strings[0])).to(self.device)
        except BitstreamError as err:
            raise BitstreamError(f"{source}: {err}") from None
        codec_stream = replace(stream, strings=stream.strings[1:])
        with self._roi(latent=roi):
            decoded, indexes = self.codec.decode_stream(codec_stream)
        check_decoded(stream, decoded, indexes, source=source, name=self.codec.name, strict=strict)
        return decoded


@dataclass(frozen=True)
class RoiCodecSpec:
    """A trained codec's checkpoint, QF, and where each split's ROIs are: `region_stores`
    (split, object mask store) pairs; `regions_fingerprint` keeps resumed work from going stale
    when the masks change."""

    checkpoint: str
    sha256: str
    qf: float
    region_stores: tuple[tuple[str, str], ...]
    regions_fingerprint: str
    device: str = "cpu"
    suffix = ".bin"

    def build(self) -> RoiCodec:
        learned = LearnedCodecSpec(self.checkpoint, self.sha256, self.device)
        return RoiCodec(learned.build(), self.qf)
