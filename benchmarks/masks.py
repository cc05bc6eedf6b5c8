"""Object-mask throughput and size: icmflow's sharded zarr build against a naive loop.

Baseline (the usual research script): for every image, OR together pycocotools `annToMask` of
each instance and write the union as one PNG file. icmflow: `build_object_masks` (RLE merge,
one decode per image, sharded zarr v3 writes) on a dask LocalCluster. Both run here, on the same
annotations, in this one run; the script prints throughputs, bytes per mask and their ratios.

Sizes compared per mask: the icmflow store (all files / images), the union mask as COCO
compressed RLE in JSON, and the baseline's PNG files.

    python benchmarks/masks.py                          # COCO-like synthetic annotations
    python benchmarks/masks.py --coco instances.json    # any COCO instances file (no pixels needed)
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from icmflow.datasets.rle import uncompressed_rle
from icmflow.masks.build import build_object_masks
from icmflow.masks.store import MaskStore
from icmflow.runtime.cluster import dask_client


def synthetic_coco(n_images: int, seed: int = 0) -> dict:
    """COCO-like annotations: 640×480-ish images, ~7 polygon instances each, a few crowds."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        w, h = (640, 480) if rng.random() < 0.7 else (480, 640)
        images.append(
            {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h}
        )
        for _ in range(rng.poisson(7)):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            radius = rng.lognormal(3.3, 0.8)
            t = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(8, 40))))
            r = radius * rng.uniform(0.6, 1.0, size=t.size)
            xs = np.clip(cx + r * np.cos(t), 0, w)
            ys = np.clip(cy + r * np.sin(t), 0, h)
            polygon = [round(float(v), 2) for pair in zip(xs, ys, strict=True) for v in pair]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": [polygon],
                    "iscrowd": 0,
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(np.ptp(xs)),
                        float(np.ptp(ys)),
                    ],
                    "area": 0.0,
                }
            )
        if rng.random() < 0.01:
            crowd = np.zeros((h, w), dtype=bool)
            crowd[h // 3 : h // 2, w // 4 : w // 2] = True
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": uncompressed_rle(crowd),
                    "iscrowd": 1,
                    "bbox": [w / 4, h / 3, w / 4, h / 6],
                    "area": float(crowd.sum()),
                }
            )
    categories = [{"id": 1, "name": "object"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def naive_baseline(coco_path: Path, out: Path) -> tuple[float, int]:
    """Per image: union of annToMask over instances, written as one PNG. Returns (s, bytes)."""
    out.mkdir()
    start = time.perf_counter()
    coco = COCO(str(coco_path))
    for image_id, info in coco.imgs.items():
        union = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            union |= coco.annToMask(ann)
        Image.fromarray(union * 255).save(out / f"{image_id}.png")
    elapsed = time.perf_counter() - start
    return elapsed, sum(p.stat().st_size for p in out.iterdir())


def rle_json_bytes(store: MaskStore) -> int:
    total = 0
    for image_id in store.image_ids:
        rle = mask_utils.encode(np.asfortranarray(store.mask(image_id).astype(np.uint8)))
        total += len(json.dumps({"size": rle["size"], "counts": rle["counts"].decode()}))
    return total


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco", type=Path, help="a COCO instances JSON (default: synthetic)")
    parser.add_argument("--images", type=int, default=3000, help="synthetic images")
    parser.add_argument("--workers", type=int, default=2, help="dask worker processes")
    parser.add_argument("--images-per-shard", type=int, default=256)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.coco:
            coco_path, dataset = args.coco, json.loads(args.coco.read_text())
        else:
            dataset = synthetic_coco(args.images)
            coco_path = tmp / "instances.json"
            coco_path.write_text(json.dumps(dataset))
        n = len(dataset["images"])
        print(f"{n} images, {len(dataset['annotations'])} instances ({coco_path.name})")

        naive_s, png_bytes = naive_baseline(coco_path, tmp / "png")

        def timed_build(name: str, client) -> tuple[Path, float]:
            start = time.perf_counter()
            path = build_object_masks(
                dataset,
                tmp / f"{name}.zarr",
                work=tmp / f"work-{name}",
                source=str(coco_path),
                include_crowd=True,
                images_per_shard=args.images_per_shard,
                client=client,
            )
            return path, time.perf_counter() - start

        _, serial_s = timed_build("serial", None)
        with dask_client(None, n_workers=args.workers) as client:
            client.run(importlib.import_module, "icmflow.masks.build")  # warm workers, as in use
            store_path, ours_s = timed_build("dask", client)
        store = MaskStore(store_path)
        for image_id in store.image_ids[:: max(n // 50, 1)]:  # spot check against the baseline
            png = np.asarray(Image.open(tmp / "png" / f"{image_id}.png")) > 0
            assert np.array_equal(png, store.mask(image_id)), image_id
        store_bytes, rle_bytes = folder_bytes(store_path), rle_json_bytes(store)

    rows = [
        ("throughput (images/s)", None, None),
        ("  naive annToMask union + PNG (1 process)", n / naive_s, None),
        ("  icmflow zarr shards, 1 process", n / serial_s, naive_s / serial_s),
        (f"  icmflow zarr shards, {args.workers} dask workers", n / ours_s, naive_s / ours_s),
        ("bytes per mask (ratio: this / icmflow)", None, None),
        ("  icmflow zarr store", store_bytes / n, 1.0),
        ("  COCO compressed RLE in JSON", rle_bytes / n, rle_bytes / store_bytes),
        ("  PNG files of the naive loop", png_bytes / n, png_bytes / store_bytes),
    ]
    for label, value, ratio in rows:
        line = label if value is None else f"{label:<44}{value:12.1f}"
        print(line + (f"   {ratio:6.2f}x" if ratio is not None else ""))


if __name__ == "__main__":
    main()
