"""Decoding image files into the one pixel format the pipeline uses: H×W×3 uint8 RGB.

Images are taken in their *stored* orientation: EXIF orientation tags are not applied, because
COCO's `width`/`height` and annotation coordinates refer to the stored pixels (as pycocotools and
the COCO evaluation server read them). Every stage (masks, training, encoding, evaluation) reads
pixels through `read_rgb`, so the convention holds everywhere.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from icmflow.files import write_bytes


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to H×W×3 uint8 RGB.

    Grayscale is replicated to three channels, palette images are expanded, alpha is dropped
    (not composited), and 16/32-bit integer images keep their 8 most significant bits.
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


def read_rgb(path: Path | str) -> np.ndarray:
    """Decode `path` completely (a truncated file raises `OSError`) to H×W×3 uint8 RGB."""
    with Image.open(path) as image:
        image.load()
        return to_rgb8(image)


def read_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.size


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write H×W×3 uint8 pixels losslessly, through a rename."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())
