"""Learned codecs through their real entropy coder: pixels -> bitstream bytes -> decoded pixels.

Images are padded bottom/right by edge replication to a multiple of the model's
`pad_multiple` (64 for CompressAI's models, which downsample by 2^6), and decoded images are
cropped back and rounded to 8 bits. The networks run under `fixed_numerics`, and the bitstream
carries the checks of `icmflow.coding.reproducible`: decoding verifies them and raises a
`BitstreamError` instead of returning an image its encoder did not produce.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from compressai.models import CompressionModel

from icmflow.codecs.checkpoint import load_codec
from icmflow.codecs.cpu_inference import speed_up_transforms
from icmflow.coding.bitstream import Bitstream, pack, strings_of_one_image, unpack
from icmflow.coding.image_codec import Coded
from icmflow.coding.reproducible import IndexRecorder, fixed_numerics, pixel_check
from icmflow.core.errors import BitstreamError

PAD_MULTIPLE = 64
"""The padding multiple of models without a `pad_multiple` attribute."""


def to_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×H×W float in [0, 1]."""
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1×3×H×W float -> H×W×3 uint8, clamped to [0, 1] and rounded to the nearest level."""
    return x[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class LearnedCodec:
    """A `CompressionModel` (after `update(force=True)`) as an `ImageCodec`. On a CPU its
    transforms are sped up in place (`speed_up_transforms`: same state dict, the same function
    to float rounding)."""

    suffix = ".bin"

    def __init__(self, model: CompressionModel, *, name: str = "codec"):
        self.model = model.eval()
        self.name = name
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            speed_up_transforms(model)
        self.multiple = getattr(model, "pad_multiple", PAD_MULTIPLE)

    @torch.no_grad()
    def decode_stream(self, stream: Bitstream) -> tuple[np.ndarray, int]:
        """The pixels a parsed bitstream decodes to, and the CRC of the scale indexes used
        (unchecked: `decode` checks both)."""
        recorder = IndexRecorder()
        with fixed_numerics(self.device), recorder.watching(self.model):
            strings = [[s] for s in stream.strings]
            x_hat = self.model.decompress(strings, torch.Size(stream.shape))["x_hat"]
        return to_uint8(x_hat[..., : stream.height, : stream.width]), recorder.value

    @torch.no_grad()
    def encode(self, rgb: np.ndarray) -> Coded:
        height, width = rgb.shape[:2]
        x = to_tensor(rgb, self.device)
        x = F.pad(x, (0, -width % self.multiple, 0, -height % self.multiple), mode="replicate")
        recorder = IndexRecorder()
        with fixed_numerics(self.device), recorder.watching(self.model):
            output = self.model.compress(x)
        shape = tuple(int(d) for d in output["shape"])
        stream = Bitstream(height, width, shape, strings_of_one_image(output), recorder.value, 0)
        decoded, decoder_indexes = self.decode_stream(stream)
        check_encoder_decode(self.name, decoder_indexes, recorder.value)
        return Coded(pack(replace(stream, pixel_check=pixel_check(decoded))), decoded)

    def decode(self, data: bytes, *, source: str = "bitstream", strict: bool = True) -> np.ndarray:
        """Decode and verify; `strict=False` accepts pixels that differ by rounding only."""
        stream = read_bitstream(data, source)
        decoded, indexes = self.decode_stream(stream)
        check_decoded(stream, decoded, indexes, source=source, name=self.name, strict=strict)
        return decoded


def read_bitstream(data: bytes, source: str) -> Bitstream:
    """`unpack(data)`, its errors naming `source`."""
    try:
        return unpack(data)
    except BitstreamError as err:
        raise BitstreamError(f"{source}: {err}") from None


def check_encoder_decode(name: str, decoded_indexes: int, encoded_indexes: int) -> None:
    """The encoder's own decode must compute the entropy parameters its encoding used."""
    if decoded_indexes != encoded_indexes:
        raise BitstreamError(
            f"{name}: decoding in the encoding process computed other entropy "
            "parameters than encoding did; this model or device does not code "
            "reproducibly (is it nondeterministic on this device?)"
        )


def check_decoded(
    stream: Bitstream,
    decoded: np.ndarray,
    indexes: int,
    *,
    source: str,
    name: str,
    strict: bool = True,
) -> None:
    """A decode of `stream` (its pixels, its scale-index check) reproduces the encoder's;
    `strict=False` accepts pixels that differ by rounding only."""
    if indexes != stream.index_check:
        raise BitstreamError(
            f"{source}: the entropy decoder's scale indexes differ from the encoder's "
            f"(check {indexes:08x}, bitstream says {stream.index_check:08x}): it was coded "
            f"by another checkpoint than {name}, or this machine computes the entropy "
            "parameters differently (decode where you encoded); the image would be garbage"
        )
    if strict and pixel_check(decoded) != stream.pixel_check:
        raise BitstreamError(
            f"{source}: decoded pixels differ from the encoder's although the entropy "
            "parameters agree: the bitstream's data is damaged, or this device computes "
            "the synthesis transform differently from the encoder's (decode where you "
            "encoded, or with strict=False to accept rounding differences)"
        )


@dataclass(frozen=True)
class LearnedCodecSpec:
    """A trained codec's checkpoint (its SHA-256 keeps a cached model from going stale)."""

    checkpoint: str
    sha256: str
    device: str = "cpu"
    suffix = ".bin"

    def build(self) -> LearnedCodec:
        return _load(self)


@cache
def _load(spec: LearnedCodecSpec) -> LearnedCodec:
    """One model per process and checkpoint."""
    model = load_codec(Path(spec.checkpoint)).to(spec.device)
    return LearnedCodec(model, name=spec.checkpoint)
