"""The evaluation resize: every image of a prepared split scaled to a given shorter edge, its
annotations scaled with it, written as a prepared split of its own.

The scale is Detectron2's `ResizeShortestEdge` (the auxiliary-loss paper's evaluation, shorter
edge 800): s = edge / min(w, h), new sides int(w·s + 0.5) and int(h·s + 0.5), pixels resampled
bilinearly by Pillow (as Detectron2's `ResizeTransform` does for 8-bit images), smaller images
enlarged as larger ones are reduced. The resized images are PNGs (lossless: the codecs' input is
exactly these pixels). Annotations follow the pixels: polygon vertices and boxes scaled by the
two sides' factors, areas by their product (COCOeval's small/medium/large ranges apply to the
resized objects, as they are what the task model sees), RLE regions resized as masks (nearest
neighbour) and written back in their own kind (uncompressed for crowd lists, compressed else).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from icmflow.datasets.file_names import output_stem
from icmflow.datasets.images import read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset
from icmflow.datasets.rle import annotation_rle, uncompressed_rle


def resized_size(width: int, height: int, shorter_edge: int) -> tuple[int, int]:
    """(width, height) once the shorter side is `shorter_edge` pixels."""
    scale = shorter_edge / min(width, height)
    return int(width * scale + 0.5), int(height * scale + 0.5)


def _region(segmentation: dict, old: tuple[int, int], new: tuple[int, int]) -> dict:
    """An RLE region of an image of size `old` (width, height) at size `new`."""
    height, width = old[1], old[0]
    mask = mask_utils.decode(annotation_rle({"segmentation": segmentation}, height, width))
    resized = cv2.resize(mask, new, interpolation=cv2.INTER_NEAREST).astype(bool)
    if isinstance(segmentation["counts"], list):
        return uncompressed_rle(resized)
    rle = mask_utils.encode(np.asfortranarray(resized.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def scale_annotation(annotation: dict, old: tuple[int, int], new: tuple[int, int]) -> dict:
    """`annotation` of an image of size `old` (width, height) for the image at size `new`."""
    sx, sy = new[0] / old[0], new[1] / old[1]
    x, y, w, h = annotation["bbox"]
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, dict):
        segmentation = _region(segmentation, old, new)
    else:
        segmentation = [
            [v * (sx if k % 2 == 0 else sy) for k, v in enumerate(polygon)]
            for polygon in segmentation
        ]
    return {
        **annotation,
        "segmentation": segmentation,
        "bbox": [x * sx, y * sy, w * sx, h * sy],
        "area": annotation["area"] * sx * sy,
    }


def _resize_image(source: Path, target: Path, size: tuple[int, int]) -> None:
    image = Image.fromarray(read_rgb(source)).resize(size, Image.Resampling.BILINEAR)
    write_png(target, np.asarray(image))


def resize_split(
    dataset: PreparedDataset, images: Path, shorter_edge: int, *, workers: int = 4
) -> dict:
    """Write every image of `dataset` resized to `shorter_edge` into the folder `images` as
    `<stem>.png` (its folders kept); the dataset's COCO dict for them (`icmflow` block aside)."""
    sizes, renamed = {}, []
    for image in dataset.images:
        old = (image["width"], image["height"])
        sizes[image["id"]] = old, resized_size(*old, shorter_edge)
        name = f"{output_stem(image['file_name'], dataset.path)}.png"
        width, height = sizes[image["id"]][1]
        renamed.append({**image, "file_name": name, "width": width, "height": height})

    def resize(pair: tuple[dict, dict]) -> None:
        image, new = pair
        _resize_image(dataset.image_path(image), images / new["file_name"], sizes[image["id"]][1])

    with ThreadPoolExecutor(workers) as pool:
        done = pool.map(resize, zip(dataset.images, renamed, strict=True))
        list(tqdm(done, total=len(renamed), desc=f"resize {dataset.path.stem}", unit="img"))
    annotations = [scale_annotation(a, *sizes[a["image_id"]]) for a in dataset.data["annotations"]]
    data = {k: v for k, v in dataset.data.items() if k != "icmflow"}
    return {**data, "images": renamed, "annotations": annotations}
