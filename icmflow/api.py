"""icmflow's Python API: the names to script with, all importable from `icmflow` itself.

    import icmflow
    codec = icmflow.open_codec("models/hyperprior-object-2/checkpoint.pth.tar")
    coded = codec.encode(icmflow.read_image("photo.png"))   # .data: the bitstream's bytes

Codecs
    `open_codec(checkpoint, machine=None, device="cpu")`: a trained codec's coder (a
    `LearnedCodec`; with the machine layer's checkpoint, a scalable codec's `LayeredCodec`).
    `classical_codec(family, **settings)`: JPEG, WebP, AVIF, HEIF (`classical_codec("jpeg",
    quality=25)`). Each `encode(rgb)` returns a `Coded` (`data`: the file's bytes, `decoded`:
    what they decode to) and `decode(data)` returns pixels; `LayeredCodec.decode(additional,
    machine)`. `decode_file(codec, path)` decodes a bitstream file (classical files need no
    codec). `load_model(checkpoint)`: the CompressAI model itself, for research on the network.
Images
    `read_image(path)`: H×W×3 uint8 RGB, as every stage reads images; `write_image(path, rgb)`:
    a PNG.
Datasets and masks
    `PreparedDataset.load(path)`: a prepared split (`data/prepared/<dataset>/<split>.json`):
    `.images`, `.annotations[image_id]`, `.image_path(image)`. `MaskStore(path)`: an object or
    edge mask store (`data/masks/<dataset>/<kind>/<split>.zarr`): `.image_ids`,
    `.mask(image_id)` (H×W bool). `overlay(rgb, mask)`, `side_by_side(panels, captions)`:
    pictures to look at.
Scores
    `image_metrics(original, decoded, mask)`: PSNR, object PSNR, MS-SSIM; `psnr(mse(a, b))`;
    `bd_rate(anchor_rates, anchor_quality, test_rates, test_quality)`;
    `score_detection(ground_truth, results, "bbox")`: COCO mAP of COCO-format results against a
    prepared split's `.data`; `score_semantic(truth_maps, predicted_maps, categories)`: mIoU.
Projects
    `load_params(path)`: a validated params.yaml; `Paths()`: where every stage reads and writes.
Errors
    `IcmflowError` (any problem the user can fix), `BitstreamError`, `CheckpointError`.

Importing `icmflow` loads none of this (the CLI starts fast); the first name used loads this
module, and PyTorch with the learned codecs' names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icmflow.codecs.checkpoint import load_codec as load_model
from icmflow.coding.classical import CLASSICAL, PillowCodec
from icmflow.coding.decode import decode_file, open_codec
from icmflow.coding.image_codec import Coded
from icmflow.coding.layered import LayeredCodec
from icmflow.coding.learned import LearnedCodec
from icmflow.core.errors import BitstreamError, CheckpointError, IcmflowError
from icmflow.datasets.images import read_rgb as read_image
from icmflow.datasets.images import write_png
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.bdrate import bd_rate
from icmflow.evaluation.metrics import image_metrics, mse, msssim, psnr
from icmflow.masks.overlay import overlay, side_by_side
from icmflow.masks.store import MaskStore
from icmflow.pipeline.params import load_params
from icmflow.pipeline.paths import Paths
from icmflow.tasks.scoring import score_detection, score_semantic


def write_image(path: Path | str, rgb: np.ndarray) -> None:
    """Write H×W×3 uint8 pixels as a PNG (through a rename, as stages write)."""
    write_png(Path(path), rgb)


def classical_codec(family: str, **settings: object) -> PillowCodec:
    """A classical codec of a registered family (jpeg, webp, avif, heif) with its settings."""
    return CLASSICAL[family](family=family, **settings).build()


__all__ = [
    "BitstreamError",
    "CheckpointError",
    "Coded",
    "IcmflowError",
    "LayeredCodec",
    "LearnedCodec",
    "MaskStore",
    "Paths",
    "PreparedDataset",
    "bd_rate",
    "classical_codec",
    "decode_file",
    "image_metrics",
    "load_model",
    "load_params",
    "mse",
    "msssim",
    "open_codec",
    "overlay",
    "psnr",
    "read_image",
    "score_detection",
    "score_semantic",
    "side_by_side",
    "write_image",
]
