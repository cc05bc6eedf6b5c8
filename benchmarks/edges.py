"""SAM edge-mask throughput: icmflow's `edge_mask` against `SamAutomaticMaskGenerator`.

Baseline: `SamAutomaticMaskGenerator(model)` with its defaults (32 points per side, 64 points per
batch, one crop layer, binary masks), one image at a time; its masks become an edge mask through
icmflow's own `mask_edges`, so only the mask generation differs. icmflow: `edge_mask` with the
same generator settings, its own points per batch and each precision asked for. Both run on the
same device, on the same images, with the same model instance, in this one run; the script
prints images/s, the ratio to the baseline and the IoU of each edge mask to the baseline's.

Without --checkpoint the model has random weights (seed 0), which is fine for throughput; SAM
then keeps no mask under its default quality thresholds, so both sides get
pred_iou_thresh = stability_score_thresh = 0 (say so when you quote the figures).

    python benchmarks/edges.py                                   # vit_b, random weights, Kodak
    python benchmarks/edges.py --checkpoint sam_vit_b_01ec64.pth --precision float32 float16
    python benchmarks/edges.py --points-per-side 16 --images 3 --precision float32 bfloat16  # CPU
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator

from icmflow.datasets.images import read_rgb
from icmflow.masks.edges import EdgeSettings, edge_mask, mask_edges
from icmflow.runtime.devices import resolve_device
from icmflow.vision.sam.model import SamRunner, SamSpec, build_model

SAMPLES = Path(
    os.environ.get("ICMFLOW_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples")
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_edges(
    generator: SamAutomaticMaskGenerator, image: np.ndarray, width: int
) -> np.ndarray:
    records = generator.generate(image)
    if not records:
        return np.zeros(image.shape[:2], dtype=bool)
    masks = torch.from_numpy(np.stack([r["segmentation"] for r in records]))
    return mask_edges(masks, width).any(dim=0).numpy()


def timed(
    runs: dict[str, Callable[[np.ndarray], np.ndarray]], images: list[np.ndarray], device
) -> tuple[dict[str, float], dict[str, list[np.ndarray]]]:
    """Seconds and results of every run on all images but the first, which warms each up.

    The runs take turns image by image, so that a machine busy with other work slows all alike.
    """
    seconds = dict.fromkeys(runs, 0.0)
    results: dict[str, list[np.ndarray]] = {name: [] for name in runs}
    for run in runs.values():
        run(images[0])
    for image in images[1:]:
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            results[name].append(run(image))
            synchronize(device)
            seconds[name] += time.perf_counter() - start
    return seconds, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=SAMPLES / "kodak", help="images (PNG/JPEG)")
    parser.add_argument("--images", type=int, default=8, help="how many images to time")
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--checkpoint", type=Path, help="official SAM checkpoint (default: random)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--points-per-side", type=int, default=32, help="both sides")
    parser.add_argument("--points-per-batch", type=int, default=64, help="icmflow's side")
    parser.add_argument("--precision", nargs="+", default=["float32"], help="icmflow's side")
    parser.add_argument("--edge-width", type=int, default=1)
    args = parser.parse_args()

    files = sorted(
        p for p in args.folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
    )
    if not files:
        raise SystemExit(f"no images in {args.folder} (set ICMFLOW_SAMPLES or --folder)")
    images = [read_rgb(p) for p in files[: args.images + 1]]  # the first one warms up
    device = resolve_device(args.device, "--device")
    checkpoint = str(args.checkpoint) if args.checkpoint else None
    model = build_model(SamSpec(args.model_type, checkpoint), device)
    thresholds = {} if checkpoint else {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    size = "x".join(str(v) for v in images[1].shape[1::-1])
    print(
        f"{args.model_type} ({'checkpoint' if checkpoint else 'random weights'}) on {device}, "
        f"{len(images) - 1} images of {args.folder.name} ({size}), "
        f"{args.points_per_side}² points{', thresholds 0' if thresholds else ''}"
    )

    generator = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, **thresholds)
    settings = EdgeSettings(
        method="boundary",  # the baseline's edges are `mask_edges` of its masks
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        edge_width=args.edge_width,
        **thresholds,
    )
    baseline = "SamAutomaticMaskGenerator (defaults)"
    runs = {baseline: lambda image: reference_edges(generator, image, args.edge_width)}
    for precision in args.precision:
        runner = SamRunner(model, SamSpec(args.model_type, checkpoint, str(device), precision))
        label = f"icmflow edge_mask, {precision}, {args.points_per_batch} per batch"
        runs[label] = lambda image, r=runner: edge_mask(r, image, settings)
    seconds, results = timed(runs, images, device)

    n, base = len(images) - 1, results[baseline]
    print(f"{'':<52}{'images/s':>10}{'ratio':>8}{'IoU mean':>10}{'IoU min':>9}")
    for label, time_s in seconds.items():
        line = f"{label:<52}{n / time_s:10.4f}{seconds[baseline] / time_s:7.2f}x"
        if label != baseline:
            ious = [iou(a, b) for a, b in zip(results[label], base, strict=True)]
            line += f"{np.mean(ious):10.4f}{min(ious):9.4f}"
        print(line)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        print(f"peak GPU memory, all runs: {peak:.0f} MiB")
    edge_fraction = np.mean([b.mean() for b in base])
    print(f"baseline edge pixels: {100 * edge_fraction:.2f}% of each image on average")


if __name__ == "__main__":
    main()
