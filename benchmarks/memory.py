"""Peak memory of one worker of `masks`, `edges` and `encode` against the image size.

Each measurement runs in a fresh process, as one dask worker runs one task: it builds what the
worker holds (the SAM or codec model), records its peak RSS (`ru_maxrss`), then does one task
at the given image size and records the peak again. Printed: the whole peak and the growth the
task adds over the ready worker, in MiB, and the growth per megapixel. Sizes: VisDrone
(2000×1500) and Cityscapes (2048×1024) by default.

- masks: one shard (`--images-per-shard`, 16 by default) of COCO-like synthetic annotations (30
  polygons and a crowd RLE per image), built into a mask store as `masks@` does;
- edges: `edge_mask` with vit_b (random weights unless --sam-checkpoint; thresholds 0 so that
  every candidate mask is kept, the worst case), `--points-per-side` 16, `memory_mb` 512;
- encode: one image through `LearnedCodec.encode` (compress, decompress, checks) with
  bmshj2018-hyperprior N=128 M=192, random weights.

    python benchmarks/memory.py
    python benchmarks/memory.py --stages encode --sizes 4000x3000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZES = {"VisDrone": (2000, 1500), "Cityscapes": (2048, 1024)}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def textured(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [128 + 90 * np.sin(xx / (7 + 3 * c)) * np.cos(yy / (11 + 2 * c)) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def synthetic_shard(width: int, height: int, n_images: int) -> dict:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "width": width, "height": height}
        )
        for _ in range(30):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(10, min(width, height) / 6)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
            xs = np.clip(cx + r * np.cos(angles), 0, width - 1)
            ys = np.clip(cy + r * np.sin(angles), 0, height - 1)
            polygon = np.stack([xs, ys], axis=1).ravel().round(2).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": [polygon],
                    "iscrowd": 0,
                    "area": 1.0,
                    "bbox": [0, 0, 1, 1],
                }
            )
        crowd = np.zeros((height, width), dtype=np.uint8, order="F")
        crowd[: height // 4, : width // 4] = 1
        rle = mask_utils.encode(crowd)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "iscrowd": 1,
                "area": 1.0,
                "bbox": [0, 0, 1, 1],
            }
        )
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "o"}]}


def child(stage: str, width: int, height: int, args: argparse.Namespace) -> dict:
    """Run in the measuring process: ready the worker, then one task."""
    if stage == "masks":
        from icmflow.masks.build import build_object_masks

        dataset = synthetic_shard(width, height, args.images_per_shard)
        ready = peak_mib()
        with tempfile.TemporaryDirectory() as tmp:
            build_object_masks(
                dataset,
                Path(tmp, "m.zarr"),
                work=Path(tmp, "work"),
                source="x",
                include_crowd=True,
                images_per_shard=args.images_per_shard,
                client=None,
            )
        pixels = width * height * args.images_per_shard
    elif stage == "edges":
        from icmflow.masks.edges import EdgeSettings, edge_mask
        from icmflow.vision.sam.model import SamSpec, sam_session

        spec = SamSpec("vit_b", args.sam_checkpoint, device="cpu", memory_mb=512)
        settings = EdgeSettings(
            points_per_side=args.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0
        )
        with sam_session(spec) as runner:
            rgb = textured(width, height)
            ready = peak_mib()
            edge_mask(runner, rgb, settings)
        pixels = width * height
    else:
        import torch

        from icmflow.codecs.architectures import create_model
        from icmflow.coding.learned import LearnedCodec

        model = create_model("bmshj2018-hyperprior", seed=0, N=128, M=192).eval()
        with torch.no_grad():
            model.g_a[-1].weight.mul_(20.0)
        model.update(force=True)
        codec = LearnedCodec(model)
        rgb = textured(width, height)
        ready = peak_mib()
        codec.encode(rgb)
        pixels = width * height
    peak = peak_mib()
    return {
        "ready_mib": ready,
        "peak_mib": peak,
        "growth_mib": peak - ready,
        "mib_per_mpixel": (peak - ready) / (pixels / 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["masks", "edges", "encode"],
        choices=["masks", "edges", "encode"],
    )
    parser.add_argument("--sizes", nargs="+", default=[f"{w}x{h}" for w, h in SIZES.values()])
    parser.add_argument("--images-per-shard", type=int, default=16)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--sam-checkpoint", default=None)
    parser.add_argument(
        "--child", nargs=3, metavar=("STAGE", "WIDTH", "HEIGHT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        stage, width, height = args.child
        print(json.dumps(child(stage, int(width), int(height), args)))
        return
    names = {f"{w}x{h}": name for name, (w, h) in SIZES.items()}
    passed = sys.argv[1:]
    print(
        f"{'stage':8} {'image':>20} {'ready MiB':>10} {'peak MiB':>9} {'growth':>8} {'MiB/MP':>7}"
    )
    for stage in args.stages:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            command = [sys.executable, __file__, *passed, "--child", stage, str(width), str(height)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            label = f"{size} {names.get(size, '')}".strip()
            print(
                f"{stage:8} {label:>20} {r['ready_mib']:10.0f} {r['peak_mib']:9.0f} "
                f"{r['growth_mib']:8.0f} {r['mib_per_mpixel']:7.1f}"
            )


if __name__ == "__main__":
    main()
