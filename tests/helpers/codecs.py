"""Tiny codecs ready to code, and how the encode stage describes them to its workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from icmflow.codecs.architectures import create_model
from icmflow.coding.learned import LearnedCodecSpec
from icmflow.core.resume import file_digest

TCM_TINY = {
    "config": [1, 1, 1, 1, 1, 1],
    "head_dim": [8, 8, 8, 8, 8, 8],
    "N": 32,
    "M": 64,
    "num_slices": 4,
    "max_support_slices": 2,
    "z_channels": 32,
    "attention_dim": 32,
    "slice_hidden": [48, 32],
}
"""A TCM of one block per stage: the model_args of the tests' tiny TCMs."""


def tiny_codec(arch: str = "bmshj2018-hyperprior", seed: int = 0, gain: float = 1.0, **model_args):
    """An untrained codec with its CDF tables built (N=M=16 unless told).

    Random weights give latents near 0 that code to a few bytes whatever the image; `gain`
    scales the analysis transform's last layer, so that the latents carry the image.
    """
    model = create_model(arch, seed=seed, **({"N": 16, "M": 16} | model_args)).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(gain)
    model.update(force=True)
    return model


def learned_spec(checkpoint: Path, device: str = "cpu") -> LearnedCodecSpec:
    return LearnedCodecSpec(str(checkpoint), file_digest(checkpoint), device)


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, deterministic RGB image worth coding (noise does not compress)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    channels = [
        128 + 90 * np.sin(xx / (7 + 3 * c) + phases[c]) * np.cos(yy / (11 + 2 * c))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def to_batch(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
