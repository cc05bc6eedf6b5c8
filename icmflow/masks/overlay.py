"""Pictures for people: a mask over its image, and images side by side with captions.

`icmflow show` writes these as PNGs; they are plain H×W×3 uint8 arrays, for notebooks too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OBJECT_COLOUR = (255, 40, 40)
EDGE_COLOUR = (40, 255, 40)
CAPTION_SIZE = (12, 1 / 30)
"""Caption text height: at least 12 pixels, or this fraction of the tallest panel."""


def overlay(
    rgb: np.ndarray, mask: np.ndarray, colour: Sequence[int] = OBJECT_COLOUR, alpha: float = 0.5
) -> np.ndarray:
    """`rgb` with the pixels of the H×W bool `mask` blended towards `colour` (alpha 1: painted)."""
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"the mask is {mask.shape}, the image {rgb.shape[:2]}")
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return np.rint(out).astype(np.uint8)


def difference(original: np.ndarray, decoded: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """The absolute error, averaged over channels and scaled by `gain`, as a grey image."""
    error = np.abs(original.astype(np.float32) - decoded.astype(np.float32)).mean(axis=2)
    grey = np.clip(error * gain, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def side_by_side(panels: Sequence[np.ndarray], captions: Sequence[str], gap: int = 4) -> np.ndarray:
    """Panels left to right on white, each under its caption."""
    if len(panels) != len(captions):
        raise ValueError(f"{len(panels)} panels but {len(captions)} captions")
    tallest = max(p.shape[0] for p in panels)
    size = max(CAPTION_SIZE[0], round(tallest * CAPTION_SIZE[1]))
    font = ImageFont.load_default(size=size)
    top = size + size // 3
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, tallest + top), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, caption in zip(panels, captions, strict=True):
        canvas.paste(Image.fromarray(panel), (x, top))
        draw.text((x + 2, 0), caption, fill="black", font=font)
        x += panel.shape[1] + gap
    return np.asarray(canvas)
