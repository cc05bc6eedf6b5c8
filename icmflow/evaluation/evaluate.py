"""Quality and rate of a coded dataset against its source and object masks.

Images are evaluated in parallel on threads (the decoders, OpenCV's filters and numpy's array
operations run outside the GIL), one per core by default, OpenCV itself on one thread meanwhile;
each image's metrics are computed the same way whatever the number of threads.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from statistics import fmean

import cv2
import numpy as np
from tqdm import tqdm

from icmflow.core.errors import MissingInputError
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.metrics import Planes, image_metrics
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


@contextmanager
def _opencv_threads(threads: int) -> Iterator[None]:
    saved = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(saved)


def evaluate_coded(
    source: PreparedDataset,
    coded: PreparedDataset,
    masks: MaskStore | None,
    bytes_per_image: dict[int, int],
    *,
    workers: int | None = None,
    precise: bool = False,
) -> tuple[list[dict], dict]:
    """Per-image rows and dataset aggregates (see `DEFINITIONS`), images evaluated on `workers`
    threads (None: one per core); `precise`: MS-SSIM by pytorch_msssim (see `msssim`). Without
    `masks` (a dataset without annotations) every image counts as one without objects."""
    coded_by_id = {image["id"]: image for image in coded.images}
    for image in source.images:
        if image["id"] not in coded_by_id or image["id"] not in bytes_per_image:
            raise MissingInputError(
                f"{coded.path}: image id {image['id']} was not coded; rerun encode"
            )

    local = threading.local()  # each thread's work planes, freed with it when this returns

    def evaluate(image: dict) -> dict:
        if not hasattr(local, "planes"):
            local.planes = Planes()
        image_id = image["id"]
        original = read_rgb(source.image_path(image))
        decoded = read_rgb(coded.image_path(coded_by_id[image_id]))
        row = {"image_id": image_id, "file_name": image["file_name"]}
        row["bytes"] = bytes_per_image[image_id]
        row["bpp"] = 8 * row["bytes"] / (image["width"] * image["height"])
        mask = np.zeros(original.shape[:2], bool) if masks is None else masks.mask(image_id)
        row.update(image_metrics(original, decoded, mask, precise=precise, planes=local.planes))
        return row

    workers = workers or len(os.sched_getaffinity(0))
    with _opencv_threads(1), ThreadPoolExecutor(workers) as pool:
        done = pool.map(evaluate, source.images)
        rows = list(tqdm(done, total=len(source.images), desc="evaluate", unit="img"))
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
