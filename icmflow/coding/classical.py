"""Classical codecs, the anchors every ICM paper plots against: JPEG, WebP, AVIF and HEVC-intra.

Each family is a registered settings class (`CLASSICAL`) that is its own `CodecSpec` and
`ImageCodec`: Pillow writes the file (AVIF and WebP are built into Pillow; HEIF/HEVC comes from
`pillow-heif`, x265 inside), bpp counts every byte of that file, container headers included, and
the same library decodes it. A new family is one class registered here with a `family` name, its
Pillow format, file suffix and encoder options.

Encoders run single-threaded where they have the option, so a file does not depend on the
machine's core count; work is parallel across images (dask workers) instead.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from icmflow.coding.image_codec import Coded
from icmflow.core.errors import BitstreamError
from icmflow.core.registry import Registry
from icmflow.datasets.images import to_rgb8

Subsampling = Literal["4:4:4", "4:2:2", "4:2:0"]


class PillowCodec(BaseModel):
    """Settings of one classical codec; encodes and decodes through Pillow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    pillow_format: ClassVar[str]
    suffix: ClassVar[str]

    def save_options(self) -> dict[str, Any]:
        """Keyword arguments of `Image.save` for this family."""
        raise NotImplementedError

    def build(self) -> PillowCodec:
        _register_plugins()
        return self

    def encode(self, rgb: np.ndarray) -> Coded:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=self.pillow_format, **self.save_options())
        data = buffer.getvalue()
        return Coded(data, self.decode(data))

    def decode(self, data: bytes, *, source: str = "bitstream") -> np.ndarray:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                if image.format != self.pillow_format:
                    raise BitstreamError(f"{source}: a {image.format} file, not {self.family}")
                return to_rgb8(image)
        except (OSError, SyntaxError) as err:  # Pillow's errors for corrupt files
            raise BitstreamError(f"{source}: not a decodable {self.family} file ({err})") from None


CLASSICAL: Registry[type[PillowCodec]] = Registry("classical codec family")


@CLASSICAL.register("jpeg")
class Jpeg(PillowCodec):
    """Baseline JPEG (libjpeg-turbo), Pillow's defaults but for the options below."""

    family: Literal["jpeg"]
    quality: int = Field(ge=1, le=100)
    subsampling: Subsampling = "4:2:0"
    optimize: bool = Field(False, description="optimised Huffman tables (smaller, same pixels)")
    pillow_format: ClassVar[str] = "JPEG"
    suffix: ClassVar[str] = ".jpg"

    def save_options(self) -> dict[str, Any]:
        return {"quality": self.quality, "subsampling": self.subsampling, "optimize": self.optimize}


@CLASSICAL.register("webp")
class WebP(PillowCodec):
    """Lossy WebP (libwebp, VP8 intra)."""

    family: Literal["webp"]
    quality: int = Field(ge=0, le=100)
    method: int = Field(6, ge=0, le=6, description="effort: 0 fast ... 6 best")
    pillow_format: ClassVar[str] = "WEBP"
    suffix: ClassVar[str] = ".webp"

    def save_options(self) -> dict[str, Any]:
        return {"quality": self.quality, "method": self.method}


@CLASSICAL.register("avif")
class Avif(PillowCodec):
    """AVIF (AV1 intra through libavif and libaom)."""

    family: Literal["avif"]
    quality: int = Field(ge=0, le=100)
    speed: int = Field(6, ge=0, le=10, description="0 slowest and best ... 10 fastest")
    subsampling: Subsampling = "4:2:0"
    pillow_format: ClassVar[str] = "AVIF"
    suffix: ClassVar[str] = ".avif"

    def save_options(self) -> dict[str, Any]:
        return {
            "quality": self.quality,
            "speed": self.speed,
            "subsampling": self.subsampling,
            "max_threads": 1,
        }


@CLASSICAL.register("heif")
class Heif(PillowCodec):
    """HEVC intra in a HEIF container (pillow-heif: x265 to encode, libde265 to decode)."""

    family: Literal["heif"]
    quality: int = Field(ge=0, le=100)
    chroma: Literal[420, 422, 444] = 420
    pillow_format: ClassVar[str] = "HEIF"
    suffix: ClassVar[str] = ".heic"

    def save_options(self) -> dict[str, Any]:
        return {"quality": self.quality, "chroma": self.chroma}


def classical_decoder(suffix: str) -> PillowCodec:
    """A codec of the family whose files end in `suffix` (`.jpg`, ...), to decode such files:
    decoding needs none of the encoder's settings."""
    for family, codec in CLASSICAL.items():
        if codec.suffix == suffix.lower():
            return codec.model_construct(family=family).build()
    known = ", ".join(codec.suffix for _, codec in CLASSICAL.items())
    raise BitstreamError(f"no classical codec writes {suffix!r} files (they write {known})")


def _register_plugins() -> None:
    """Make Pillow read and write HEIF (once per process)."""
    from pillow_heif import register_heif_opener

    if "HEIF" not in Image.OPEN:
        register_heif_opener()
