"""Evaluation speed: icmflow's `evaluate_coded` against today's reference computation.

Baseline (the evaluate stage before this benchmark): one image after another, MS-SSIM by
pytorch_msssim's `ms_ssim` on float64 tensors (`evaluate_coded(..., workers=1, precise=True)`,
torch on its default threads). icmflow: `evaluate_coded` as the stage calls it, MS-SSIM in
float64 through OpenCV's separable filter, images on one thread per core; and the same on one
thread, which shows how much of the ratio is the computation and how much the threads.

Real images: Kodak (24, no objects: object PSNR is NaN) and COCO val2017 (158, with their object
masks), prepared, masked and coded by icmflow (JPEG at `--qualities`, the classical codec of the
pipeline) in a temporary folder before any clock starts. Times include reading both images and
the mask, as the stage does. Prints per-image seconds of each, the ratios and, per metric, the
largest difference from the baseline over all images.

    python benchmarks/evaluate.py                              # Kodak and COCO, JPEG q 20 and 75
    python benchmarks/evaluate.py --coco-images 40 --qualities 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import coded_split, encode_dataset, read_bytes_per_image
from icmflow.core.errors import ProblemLog
from icmflow.datasets.coco import prepare_coco
from icmflow.datasets.images import read_header
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.evaluation.evaluate import evaluate_coded
from icmflow.masks.build import build_object_masks
from icmflow.masks.store import MaskStore

SAMPLES = Path(
    os.environ.get("ICMFLOW_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples")
)
METRICS = ("psnr", "object_psnr", "ms_ssim")


def kodak_annotations(folder: Path, out: Path) -> Path:
    """A COCO JSON listing Kodak's images, without objects."""
    images = []
    for image_id, path in enumerate(sorted(folder.glob("*.png")), start=1):
        header = read_header(path)
        images.append(
            {"id": image_id, "file_name": path.name, "width": header.width, "height": header.height}
        )
    data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    out.write_text(json.dumps(data))
    return out


def prepare(name: str, annotations: Path, images: Path, limit: int, tmp: Path) -> tuple:
    """The first `limit` images prepared as the `prepare` stage does, and their object masks."""
    dataset = prepare_coco(annotations, images, ProblemLog("raise"), workers=2)
    keep = {image["id"] for image in dataset["images"][:limit]}
    dataset["images"] = [image for image in dataset["images"] if image["id"] in keep]
    dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] in keep]
    path = tmp / name / "val.json"
    path.parent.mkdir(parents=True)
    write_prepared(path, dataset, image_root=images, final_dir=path.parent)
    masks = build_object_masks(
        dataset,
        tmp / name / "masks.zarr",
        work=tmp / name / "masks.work",
        source=str(path),
        include_crowd=True,
        images_per_shard=64,
        client=None,
    )
    return PreparedDataset.load(path), MaskStore(masks)


def largest_differences(rows: list[dict], reference: list[dict]) -> dict[str, float]:
    """Per metric, the largest |difference| over the images (NaN or ±inf equal to itself: 0)."""
    found = dict.fromkeys(METRICS, 0.0)
    for row, ref in zip(rows, reference, strict=True):
        for key in METRICS:
            a, b = row[key], ref[key]
            if a == b or (math.isnan(a) and math.isnan(b)):
                continue
            found[key] = max(found[key], abs(a - b))
    return found


def timed(*args, **options) -> tuple[list[dict], float]:
    start = time.perf_counter()
    rows, _ = evaluate_coded(*args, **options)
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kodak-images", type=int, default=24)
    parser.add_argument("--coco-images", type=int, default=158)
    parser.add_argument("--qualities", type=int, nargs="+", default=[20, 75])
    parser.add_argument("--workers", type=int, default=None, help="threads (default: cores)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; torch threads {torch.get_num_threads()} (baseline)")
    header = "dataset codec images | s/image: baseline | 1 thread (ratio) | threads (ratio)"
    print(f"{header} | largest difference {', '.join(METRICS)}")
    worst = dict.fromkeys(METRICS, 0.0)
    totals = dict.fromkeys(("baseline", "one", "threaded", "images"), 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kodak = SAMPLES / "kodak"
        coco = SAMPLES / "coco-val158"
        datasets = {
            "kodak": prepare(
                "kodak",
                kodak_annotations(kodak, tmp / "kodak.json"),
                kodak,
                args.kodak_images,
                tmp,
            ),
            "coco-val158": prepare(
                "coco", coco / "instances_val2017.json", coco / "images", args.coco_images, tmp
            ),
        }
        for name, (source, masks) in datasets.items():
            for quality in args.qualities:
                out = tmp / name / f"jpeg-q{quality}"
                codec = CLASSICAL["jpeg"](family="jpeg", quality=quality)
                encode_dataset(codec, {"val": source}, out)
                coded = PreparedDataset.load(coded_split(out, "val"))
                inputs = (source, coded, masks, read_bytes_per_image(out, "val"))
                reference, baseline = timed(*inputs, workers=1, precise=True)
                rows, one = timed(*inputs, workers=1)
                threaded_rows, threaded = timed(*inputs, workers=args.workers)
                differences = largest_differences(rows, reference)
                unequal = {k: v for k, v in largest_differences(threaded_rows, rows).items() if v}
                assert not unequal, f"threads changed the metrics: {unequal}"
                n = len(rows)
                for key in METRICS:
                    worst[key] = max(worst[key], differences[key])
                for key, value in zip(totals, (baseline, one, threaded, n), strict=True):
                    totals[key] += value
                print(
                    f"{name} jpeg-q{quality} {n} | {baseline / n:.4f} | {one / n:.4f} "
                    f"({baseline / one:.2f}×) | {threaded / n:.4f} ({baseline / threaded:.2f}×) | "
                    + ", ".join(f"{differences[k]:.1e}" for k in METRICS)
                )
    baseline, one, threaded, n = totals.values()
    print(
        f"all {n:.0f} images: baseline {baseline / n:.4f} s/image, "
        f"icmflow {one / n:.4f} on 1 thread "
        f"({baseline / one:.2f}×), {threaded / n:.4f} on threads ({baseline / threaded:.2f}×); "
        "largest difference " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    )


if __name__ == "__main__":
    main()
