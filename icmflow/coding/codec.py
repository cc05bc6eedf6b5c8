"""One image through the real entropy coder: pixels -> bitstream bytes -> decoded pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from compressai.models import CompressionModel

from icmflow.coding.bitstream import Bitstream, from_compress_output, pack, unpack

PAD_MULTIPLE = 64
"""CompressAI's image models downsample by 2^6: inputs are padded to a multiple of 64."""


def to_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×H×W float in [0, 1]."""
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1×3×H×W float -> H×W×3 uint8, clamped to [0, 1] and rounded to the nearest level."""
    return x[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def compress_image(model: CompressionModel, rgb: np.ndarray, multiple: int = PAD_MULTIPLE) -> bytes:
    """Encode H×W×3 uint8 pixels; the image is padded bottom/right by edge replication."""
    height, width = rgb.shape[:2]
    device = next(model.parameters()).device
    x = to_tensor(rgb, device)
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return pack(from_compress_output(height, width, model.compress(x)))


@torch.no_grad()
def decompress_image(model: CompressionModel, data: bytes) -> np.ndarray:
    """Decode bitstream bytes to H×W×3 uint8 pixels, cropped back to the original size."""
    stream: Bitstream = unpack(data)
    strings = [[s] for s in stream.strings]
    x_hat = model.decompress(strings, torch.Size(stream.shape))["x_hat"]
    return to_uint8(x_hat[..., : stream.height, : stream.width])
