"""Quality and rate of a coded dataset against its source and object masks."""

from __future__ import annotations

import math
from statistics import fmean

import numpy as np
from tqdm import tqdm

from icmflow.core.errors import MissingInputError
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.metrics import image_metrics
from icmflow.masks.store import MaskStore

DEFINITIONS = {
    "bpp": "total bits of all bitstreams / total pixels",
    "psnr": "mean over images of the whole-image RGB PSNR (peak 255)",
    "object_psnr": "mean over images with objects of the PSNR over object-mask pixels only",
    "ms_ssim": "mean over images of RGB MS-SSIM (images with a side under 161 px excluded)",
}


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return fmean(finite) if finite else math.nan


def evaluate_coded(
    source: PreparedDataset,
    coded: PreparedDataset,
    masks: MaskStore | None,
    bytes_per_image: dict[int, int],
) -> tuple[list[dict], dict]:
    """Per-image rows and dataset aggregates (see `DEFINITIONS`); without `masks` (a dataset
    without annotations) every image counts as one without objects."""
    coded_by_id = {image["id"]: image for image in coded.images}
    rows = []
    for image in tqdm(source.images, desc="evaluate", unit="img"):
        image_id = image["id"]
        if image_id not in coded_by_id or image_id not in bytes_per_image:
            raise MissingInputError(
                f"{coded.path}: image id {image_id} was not coded; rerun encode"
            )
        original = read_rgb(source.image_path(image))
        decoded = read_rgb(coded.image_path(coded_by_id[image_id]))
        row = {"image_id": image_id, "file_name": image["file_name"]}
        row["bytes"] = bytes_per_image[image_id]
        row["bpp"] = 8 * row["bytes"] / (image["width"] * image["height"])
        mask = np.zeros(original.shape[:2], bool) if masks is None else masks.mask(image_id)
        row.update(image_metrics(original, decoded, mask))
        rows.append(row)
    pixels = sum(image["width"] * image["height"] for image in source.images)
    summary = {
        "images": len(rows),
        "images_with_objects": sum(1 for r in rows if r["object_fraction"] > 0),
        "bpp": 8 * sum(r["bytes"] for r in rows) / pixels if pixels else math.nan,
        "psnr": _finite_mean([r["psnr"] for r in rows]),
        "object_psnr": _finite_mean([r["object_psnr"] for r in rows]),
        "ms_ssim": _finite_mean([r["ms_ssim"] for r in rows]),
        "definitions": DEFINITIONS,
    }
    return rows, summary
