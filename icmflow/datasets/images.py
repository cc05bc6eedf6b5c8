"""Decoding image files into the one pixel format the pipeline uses: H×W×3 uint8 RGB.

Orientation: images are taken in their *stored* orientation. EXIF orientation tags are never
applied, because COCO's `width`/`height` and annotation coordinates refer to the stored pixels
(as pycocotools, torchvision's COCO reader and the COCO evaluation server read them). Every stage
(prepare's size checks, masks, training, encoding, evaluation) goes through `read_header` or
`read_rgb`, so annotations, masks and pixels always agree on the stored pixel grid. Readers whose
annotations do not record the image size (YOLO's normalised labels, VisDrone's boxes) refuse
images carrying an orientation tag: their labels may have been drawn on the rotated view.
Ultralytics applies the tag when it reads a file, so no image folder icmflow hands it carries
one (coded datasets hold tag-free PNGs; the training layout rewrites a tagged image), and
prepare's `report.json` notes every image that has one.

Colour: every mode becomes 8-bit RGB the same way for every stage (see `to_rgb8`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from icmflow.core.files import write_bytes
from icmflow.core.storage import is_url, location

EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = frozenset({5, 6, 7, 8})
"""EXIF orientations that rotate by 90° or 270°: displayed, width and height swap."""
VIEWS = {
    2: "mirrored",
    3: "rotated by 180°",
    4: "upside down",
    5: "mirrored and rotated by 90°",
    6: "rotated by 90°",
    7: "mirrored and rotated by 90°",
    8: "rotated by 90°",
}


@dataclass(frozen=True)
class Header:
    """What an image file says about itself without decoding its pixels."""

    width: int
    height: int
    orientation: int
    """EXIF orientation tag, 1 (or absent) meaning the stored pixels are displayed as they are."""

    def orientation_note(self) -> str:
        """A sentence on the EXIF orientation, empty when there is none to worry about."""
        if self.orientation == 1:
            return ""
        shown = VIEWS[self.orientation]
        if self.orientation in SWAPS_SIDES:
            shown += f", as {self.height}x{self.width}"
        return (
            f"its EXIF orientation tag is {self.orientation} (viewers show it {shown}); icmflow "
            f"reads the stored {self.width}x{self.height} pixels and ignores the tag"
        )


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to H×W×3 uint8 RGB.

    Grayscale is replicated to three channels, palette images are expanded, alpha is dropped
    (not composited: the stored colours are kept), and 16-bit samples keep their 8 most
    significant bits (PIL reads 16-bit RGB PNGs the same way, so 16-bit gray and 16-bit RGB
    agree).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "I":
        values = np.asarray(image, dtype=np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)  # a writable copy


@contextmanager
def _open(path: Path | str) -> Iterator[Image.Image]:
    """PIL's image of a local path, or of an fsspec URL read through fsspec."""
    if not is_url(path):
        with Image.open(path) as image:
            yield image
        return
    with location(path).open("rb") as handle, Image.open(handle) as image:
        yield image


def read_rgb(path: Path | str) -> np.ndarray:
    """Decode `path` completely (a truncated file raises `OSError`) to H×W×3 uint8 RGB.

    `path` may be an fsspec URL (`s3://…`, `memory://…`, `file://…`) or its `UPath`.
    """
    with _open(path) as image:
        image.load()
        return to_rgb8(image)


def read_header(path: Path | str) -> Header:
    """Stored size and EXIF orientation from the file header, without decoding the pixels."""
    with _open(path) as image:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        return Header(image.width, image.height, orientation if orientation in range(1, 9) else 1)


def undecodable(file: Path | str, error: Exception) -> str:
    """The problem report for an image file PIL cannot read."""
    return f"image file {file} cannot be decoded ({error}); replace or remove it"


def write_png(path: Path, rgb: np.ndarray, *, compress_level: int = 6) -> bytes:
    """Write H×W×3 uint8 pixels losslessly, through a rename; the file's bytes. `compress_level`
    is zlib's (0-9: 1 writes photos about 3× faster than the default 6, in files about 6 %
    larger)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=compress_level)
    write_bytes(path, buffer.getvalue())
    return buffer.getvalue()
