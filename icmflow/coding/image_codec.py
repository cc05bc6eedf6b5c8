"""What every codec family provides to the coding stages: image pixels in, one file's bytes out.

A codec entry of params.yaml becomes a `CodecSpec`: a small, picklable, hashable description
(dask workers receive it and build the codec once per process). Its `ImageCodec` encodes H×W×3
uint8 RGB pixels into the bytes of one file and decodes such bytes back; `encode` also returns
the decoded pixels, decoded from those very bytes, so a coded dataset holds exactly what its
files decode to. A `RegionCodecSpec` codes each image with its region of interest instead (an
H×W bool mask, read from the split's object mask store), e.g. `icmflow.coding.roi`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Coded:
    data: bytes
    """The file's bytes: what bpp counts."""
    decoded: np.ndarray
    """H×W×3 uint8: what `decode(data)` returns."""


class ImageCodec(Protocol):
    suffix: str
    """The file suffix of its bitstreams, e.g. `.bin`, `.jpg`."""

    def encode(self, rgb: np.ndarray) -> Coded: ...

    def decode(self, data: bytes) -> np.ndarray: ...


class CodecSpec(Protocol):
    suffix: str

    def build(self) -> ImageCodec: ...


class RegionCodec(Protocol):
    suffix: str

    def encode_region(self, rgb: np.ndarray, roi: np.ndarray) -> Coded: ...

    def decode(self, data: bytes) -> np.ndarray: ...


class RegionCodecSpec(Protocol):
    suffix: str
    region_stores: tuple[tuple[str, str], ...]
    """(split, mask store) pairs: each image's ROI is its mask in its split's store."""

    def build(self) -> RegionCodec: ...
