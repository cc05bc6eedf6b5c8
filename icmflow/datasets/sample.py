"""The embedded sample dataset: small, deterministic, COCO-format, and worth compressing.

Each image has a smooth multi-scale textured background and two to six distinct objects (discs,
stars and boxes with saturated striped textures). Objects are painted through the masks decoded
from their own annotations, so the ground truth is exact. Segmentations are polygons and, for
every third object, compressed RLE; every fifth image has no objects; the val split holds one
crowd annotation (uncompressed RLE, `iscrowd: 1`).

`write_sample` also writes the same images and objects in the other layouts icmflow reads, with
the shapes standing for classes of those datasets (`LAYOUT_CLASSES`): VisDrone (boxes; the crowd
region as an ignored region), Cityscapes (instance and label id PNGs; the crowd region as group
pixels) and YOLO (polygons as segment rows, RLE objects as box rows; no crowd).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from icmflow.core.files import write_json
from icmflow.datasets.formats.cityscapes import write_cityscapes
from icmflow.datasets.formats.visdrone import IGNORED_CATEGORY, write_visdrone
from icmflow.datasets.formats.yolo import write_dataset_yaml, write_yolo, yolo_names
from icmflow.datasets.images import write_png
from icmflow.datasets.rle import uncompressed_rle

SIZES = ((256, 192), (240, 208), (288, 224), (224, 224))
"""(width, height) choices: a few hundred pixels, short sides above MS-SSIM's 161-pixel minimum."""
CATEGORIES = [
    {"id": 1, "name": "disc", "supercategory": "shape"},
    {"id": 2, "name": "star", "supercategory": "shape"},
    {"id": 3, "name": "box", "supercategory": "shape"},
]
SPLITS = ("train", "val")
LAYOUT_CLASSES = {
    "visdrone": {1: 1, 2: 4, 3: 6},  # pedestrian, car, truck
    "cityscapes": {1: 24, 2: 26, 3: 33},  # person, car, bicycle
    "yolo": {1: 0, 2: 1, 3: 2},  # class indices; names as in CATEGORIES
}
"""The category id each layout gives the sample's disc (1), star (2) and box (3)."""


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(60, 190, size=3)
    image = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    for cell, amplitude in ((64, 40.0), (16, 18.0), (4, 8.0)):
        grid = rng.normal(size=(h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        size = ((w // cell + 2) * cell, (h // cell + 2) * cell)
        image += amplitude * cv2.resize(grid, size, interpolation=cv2.INTER_CUBIC)[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(12, 40)
    grating = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    image += 12.0 * grating[:, :, None]
    return image


def _polygon(rng: np.random.Generator, category: int, cx: float, cy: float, r: float) -> list:
    angle = rng.uniform(0, 2 * np.pi)
    if category == 1:  # disc: an ellipse of 24 vertices
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        ratio = rng.uniform(0.6, 1.0)
        x, y = r * np.cos(t), ratio * r * np.sin(t)
    elif category == 2:  # star: 5 points
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        radius = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        x, y = radius * np.cos(t), radius * np.sin(t)
    else:  # box: a rotated rectangle
        half_w, half_h = r, rng.uniform(0.5, 0.9) * r
        x, y = (
            np.array([-half_w, half_w, half_w, -half_w]),
            np.array([-half_h, -half_h, half_h, half_h]),
        )
    xr = cx + x * np.cos(angle) - y * np.sin(angle)
    yr = cy + x * np.sin(angle) + y * np.cos(angle)
    return [round(float(v), 2) for pair in zip(xr, yr, strict=True) for v in pair]


def _paint(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    h, w = mask.shape
    color = rng.uniform(0, 255, size=3)
    color[rng.integers(3)] = rng.choice([20.0, 240.0])  # saturated, unlike the background
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(10, 18)
    stripes = 0.85 + 0.15 * np.sign(
        np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    )
    image[mask] = (color[None, :] * stripes[mask][:, None]).astype(np.float32)


def _decode(segmentation, h: int, w: int) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def _annotation(
    ann_id: int, image_id: int, category: int, segmentation, mask: np.ndarray, crowd: int
) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": crowd,
    }


def _crowd(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    for _ in range(6):
        x, y = int(cx + rng.uniform(-30, 30)), int(cy + rng.uniform(-20, 20))
        cv2.circle(mask, (x, y), int(rng.uniform(5, 9)), 1, -1)
    return mask.astype(bool)


def make_split(
    split: str, n_images: int, seed: int, first_id: int
) -> tuple[dict, list[np.ndarray]]:
    """The COCO dict and the pixels of one split."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    images, annotations, pixels = [], [], []
    for k in range(n_images):
        image_id = first_id + k
        w, h = SIZES[rng.integers(len(SIZES))]
        canvas = _background(rng, h, w)
        n_objects = 0 if k % 5 == 4 else int(rng.integers(2, 7))
        for _ in range(n_objects):
            category = int(rng.integers(1, 4))
            r = float(rng.uniform(22, 60))
            cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
            polygon = _polygon(rng, category, cx, cy, r)
            mask = _decode([polygon], h, w)
            segmentation = [polygon]
            if (len(annotations) + 1) % 3 == 0:  # every third object as compressed RLE
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            _paint(canvas, mask, rng)
            annotations.append(
                _annotation(len(annotations) + 1, image_id, category, segmentation, mask, 0)
            )
        if split == "val" and k == 1:
            mask = _crowd(rng, h, w)
            _paint(canvas, mask, rng)
            annotations.append(
                _annotation(len(annotations) + 1, image_id, 1, uncompressed_rle(mask), mask, 1)
            )
        noise = rng.normal(scale=3.0, size=canvas.shape)
        pixels.append(np.clip(canvas + noise, 0, 255).round().astype(np.uint8))
        images.append(
            {
                "id": image_id,
                "file_name": f"{split}_{image_id:06d}.png",
                "width": int(w),
                "height": int(h),
            }
        )
    coco = {
        "info": {"description": "icmflow sample dataset", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    return coco, pixels


def _splits(train_images: int, val_images: int, seed: int) -> dict[str, tuple[dict, list]]:
    return {
        split: make_split(split, n, seed, first_id=1 if split == "train" else 100_001)
        for split, n in (("train", train_images), ("val", val_images))
    }


def _write_coco(out: Path, splits: dict[str, tuple[dict, list]]) -> None:
    """`out/annotations/instances_{split}.json` and `out/{split}/*.png`."""
    for split, (coco, pixels) in splits.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for image, rgb in tqdm(
            list(zip(coco["images"], pixels, strict=True)), desc=f"sample {split}", unit="img"
        ):
            write_png(folder / image["file_name"], rgb)
        write_json(out / "annotations" / f"instances_{split}.json", coco)


def in_layout(coco: dict, layout: str) -> dict:
    """The split's COCO dict with the category ids of `layout` (VisDrone crowd: ignored region)."""
    classes = LAYOUT_CLASSES[layout]
    annotations = []
    for ann in coco["annotations"]:
        category = classes[ann["category_id"]]
        if layout == "visdrone" and ann["iscrowd"]:
            category = IGNORED_CATEGORY
        annotations.append({**ann, "category_id": category})
    return {**coco, "annotations": annotations}


def write_sample(out: Path, *, train_images: int, val_images: int, seed: int) -> None:
    """The sample in every layout: `out/coco`, `out/visdrone`, `out/cityscapes`, `out/yolo`."""
    splits = _splits(train_images, val_images, seed)
    _write_coco(out / "coco", splits)
    for split, (coco, pixels) in splits.items():
        write_visdrone(out / "visdrone" / split, in_layout(coco, "visdrone"), pixels)
        write_cityscapes(out / "cityscapes", split, in_layout(coco, "cityscapes"), pixels)
        write_yolo(out / "yolo", split, coco, pixels)  # class indices: LAYOUT_CLASSES["yolo"]
    write_dataset_yaml(
        out / "yolo" / "dataset.yaml",
        yolo_names(CATEGORIES),
        {split: f"images/{split}" for split in splits},
    )
