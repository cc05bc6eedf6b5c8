"""Evaluation speed: icmflow's `evaluate_coded` against today's reference computation.

Baseline (the evaluate stage before this benchmark): one image after another, MS-SSIM by
pytorch_msssim's `ms_ssim` on float64 tensors (`evaluate_coded(..., workers=1, precise=True)`,
torch on its default threads). icmflow: `evaluate_coded` as the stage calls it, MS-SSIM in
float64 through OpenCV's separable filter, images on one thread per core; and the same on one
thread, which shows how much of the ratio is the computation and how much the threads.

Real images: Kodak (24, no objects: object PSNR is NaN) and COCO val2017 (158, with their object
masks), prepared, masked and coded by icmflow (JPEG at `--qualities`, the classical codec of the
pipeline) in a temporary folder before any clock starts. Times include reading both images and
the mask, as the stage does. Prints per image the wall seconds of each and, in brackets, its
CPU seconds (all its threads: on a machine other jobs share, CPU time is the steadier measure of
work), the baseline's over each other's, and per metric the largest difference from the
baseline over all images; asserts that the threads change no metric.

    python benchmarks/evaluate.py                     # Kodak and COCO, JPEG q 20 and 75
    OMP_NUM_THREADS=1 python benchmarks/evaluate.py   # torch (the baseline) on one thread
    python benchmarks/evaluate.py --kodak-images 6 --coco-images 20 --qualities 50
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


def timed(*args, **options) -> tuple[list[dict], float, float]:
    """The rows, wall seconds and CPU seconds (all threads) of one `evaluate_coded`."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows, _ = evaluate_coded(*args, **options)
    return rows, time.perf_counter() - wall, time.process_time() - cpu


def line(label: str, images: int, times: dict[str, tuple[float, float]]) -> str:
    """Per-image wall (CPU) seconds of each run, and the baseline's over each other's."""
    base_wall, base_cpu = times["baseline"]
    cells = [f"{label} {images}"]
    for name, (wall, cpu) in times.items():
        ratios = "" if name == "baseline" else f" {base_wall / wall:.2f}× ({base_cpu / cpu:.2f}×)"
        cells.append(f"{wall / images:.4f} ({cpu / images:.4f}){ratios}")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kodak-images", type=int, default=24)
    parser.add_argument("--coco-images", type=int, default=158)
    parser.add_argument("--qualities", type=int, nargs="+", default=[20, 75])
    parser.add_argument("--workers", type=int, default=None, help="threads (default: cores)")
    args = parser.parse_args()
    runs = {  # today's reference, icmflow on one thread, icmflow as the stage runs it
        "baseline": {"workers": 1, "precise": True},
        "1 thread": {"workers": 1},
        "threads": {"workers": args.workers},
    }
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; torch threads {torch.get_num_threads()} (baseline)")
    print(
        "dataset codec images | s/image wall (CPU), ratio wall (CPU): "
        + " | ".join(runs)
        + " | largest difference from the baseline: "
        + ", ".join(METRICS)
    )
    worst = dict.fromkeys(METRICS, 0.0)
    totals = {name: (0.0, 0.0) for name in runs}
    count = 0
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
                rows, times = {}, {}
                for run, options in runs.items():
                    rows[run], wall, cpu = timed(*inputs, **options)
                    times[run] = wall, cpu
                    totals[run] = (totals[run][0] + wall, totals[run][1] + cpu)
                changed = largest_differences(rows["threads"], rows["1 thread"])
                assert not any(changed.values()), f"threads changed the metrics: {changed}"
                differences = largest_differences(rows["threads"], rows["baseline"])
                for key in METRICS:
                    worst[key] = max(worst[key], differences[key])
                count += len(source.images)
                print(
                    line(f"{name} jpeg-q{quality}", len(source.images), times)
                    + " | "
                    + ", ".join(f"{differences[k]:.1e}" for k in METRICS)
                )
    print(line("all", count, totals) + " | " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
