"""Read a COCO instances JSON and its image folder, validate every entry, and normalise it.

The normalised schema is plain COCO (pycocotools and downstream tools read it unchanged) with:
images sorted by id, every annotation carrying `bbox`, `area` and `iscrowd`, annotation ids >= 1
(pycocotools' COCOeval treats id 0 as unmatched), and an `icmflow` block naming the image root.

Geometry outside the image by more than `EDGE_TOLERANCE` pixels is rejected, not clipped: a
polygon far outside its image usually means the annotation belongs to another image or the JSON
mixes up width and height, and clipping would hide that.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from icmflow.datasets.images import read_rgb, read_size
from icmflow.errors import InputError, ProblemLog
from icmflow.masks.rle import annotation_rle, rle_area_and_bbox

EDGE_TOLERANCE = 1.0
"""Pixels by which polygon and box coordinates may lie outside the image (COCO rounds so)."""


def load_json(path: Path) -> Any:
    """Parse a JSON file; a missing or truncated file raises `InputError` naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "", "file not found; check the path in params.yaml") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            path,
            f"line {err.lineno} column {err.colno}",
            f"invalid JSON ({err.msg}); the file is probably truncated: fetch or export it again",
        ) from None


def _entry(kind: str, index: int, item: Any, *keys: str) -> str:
    if not isinstance(item, dict):
        return f"{kind}[{index}]"
    fields = ", ".join(f"{k}={item[k]!r}" for k in keys if k in item)
    return f"{kind}[{index}] ({fields})"


def _numbers(values: Any) -> np.ndarray | None:
    """`values` as a 1-D float array if it is a list of finite numbers, else None."""
    if not isinstance(values, list):
        return None
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 1 and np.isfinite(array).all() else None


def geometry_problem(annotation: dict, width: int, height: int) -> str | None:
    """Why this annotation's segmentation or box does not fit a `width`×`height` image, or None."""
    lo, hi_x, hi_y = -EDGE_TOLERANCE, width + EDGE_TOLERANCE, height + EDGE_TOLERANCE
    bbox = annotation.get("bbox")
    if bbox is not None:
        if _numbers(bbox) is None or len(bbox) != 4:
            return f"bbox must be [x, y, w, h], got {bbox!r}"
        x, y, w, h = bbox
        if w < 0 or h < 0:
            return f"bbox has a negative size: {bbox}"
        if x < lo or y < lo or x + w > hi_x or y + h > hi_y:
            return f"bbox {bbox} lies outside the {width}x{height} image"
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        for k, polygon in enumerate(segmentation):
            coords = _numbers(polygon)
            if coords is None or len(coords) < 6 or len(coords) % 2:
                return f"segmentation polygon {k} must be [x1, y1, x2, y2, ...] with >= 3 points"
            xs, ys = coords[0::2], coords[1::2]
            if xs.min() < lo or ys.min() < lo or xs.max() > hi_x or ys.max() > hi_y:
                return (
                    f"segmentation polygon {k} spans x {xs.min():g}..{xs.max():g}, "
                    f"y {ys.min():g}..{ys.max():g}: outside the {width}x{height} image"
                )
    elif isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [height, width]:
            return f"RLE size {size} differs from the image's [height, width] [{height}, {width}]"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts):
                return "uncompressed RLE counts must be non-negative integers"
            if sum(counts) != width * height:
                return f"uncompressed RLE counts sum to {sum(counts)}, not {width}*{height}"
        elif not isinstance(counts, str):
            return "RLE counts must be a string (compressed) or a list (uncompressed)"
    elif segmentation is not None:
        return (
            f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}"
        )
    if not segmentation and bbox is None:
        return "annotation has neither a segmentation nor a bbox"
    return None


def _check_image_entries(path: Path, images: list, problems: ProblemLog) -> list[dict]:
    seen: set[int] = set()
    kept = []
    for i, image in enumerate(images):
        entry = _entry("images", i, image, "id", "file_name")
        if not isinstance(image, dict):
            problems.report(str(path), entry, "image entry must be an object")
            continue
        missing = [k for k in ("id", "file_name", "width", "height") if k not in image]
        if missing:
            problems.report(str(path), entry, f"missing field(s) {', '.join(missing)}")
            continue
        if not all(isinstance(image[k], int) and image[k] > 0 for k in ("width", "height")):
            problems.report(str(path), entry, "width and height must be positive integers")
            continue
        if not isinstance(image["id"], int):
            problems.report(str(path), entry, "id must be an integer")
            continue
        if image["id"] in seen:
            problems.report(str(path), entry, f"duplicate image id {image['id']}")
            continue
        seen.add(image["id"])
        kept.append(image)
    return kept


def _image_file_problem(file: Path, width: int, height: int, decode: bool) -> str | None:
    if not file.is_file():
        return f"image file not found: {file}"
    try:
        if decode:
            pixels = read_rgb(file)
            actual = (pixels.shape[1], pixels.shape[0])
        else:
            actual = read_size(file)
    except Exception as err:  # PIL raises many types for corrupt files
        return f"image file {file} cannot be decoded ({err}); replace or remove it"
    if actual != (width, height):
        return f"image {file} is {actual[0]}x{actual[1]} but the JSON says {width}x{height}"
    return None


def _check_image_files(
    path: Path,
    images: list[dict],
    image_root: Path,
    problems: ProblemLog,
    decode: bool,
    workers: int,
) -> list[dict]:
    def check(image: dict) -> str | None:
        return _image_file_problem(
            image_root / image["file_name"], image["width"], image["height"], decode
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(pool.map(check, images), total=len(images), desc="check images", unit="img")
        )
    kept = []
    for i, (image, problem) in enumerate(zip(images, results, strict=True)):
        if problem:
            problems.report(str(path), _entry("images", i, image, "id", "file_name"), problem)
        else:
            kept.append(image)
    return kept


def _check_annotations(
    path: Path,
    annotations: list,
    images: dict[int, dict],
    dropped_images: set[int],
    category_ids: set[int],
    problems: ProblemLog,
) -> list[dict]:
    kept = []
    for j, ann in enumerate(annotations):
        entry = _entry("annotations", j, ann, "id", "image_id")
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            problems.report(str(path), entry, "annotation needs image_id and category_id")
            continue
        if ann["image_id"] in dropped_images:
            continue  # its image was skipped already; that skip is logged
        image = images.get(ann["image_id"])
        if image is None:
            problems.report(str(path), entry, f"image_id {ann['image_id']} is not in images")
            continue
        if ann["category_id"] not in category_ids:
            problems.report(str(path), entry, f"unknown category_id {ann['category_id']}")
            continue
        problem = geometry_problem(ann, image["width"], image["height"])
        if problem:
            problems.report(str(path), entry, problem)
            continue
        kept.append(ann)
    return kept


def _normalise_annotation(ann: dict, image: dict) -> dict:
    out = {
        "id": ann.get("id"),
        "image_id": ann["image_id"],
        "category_id": ann["category_id"],
        "segmentation": ann.get("segmentation") or [],
        "iscrowd": int(ann.get("iscrowd", 0)),
    }
    if "bbox" in ann and "area" in ann:
        out["bbox"], out["area"] = ann["bbox"], ann["area"]
    else:
        area, bbox = rle_area_and_bbox(annotation_rle(ann, image["height"], image["width"]))
        out["bbox"], out["area"] = ann.get("bbox", bbox), ann.get("area", area)
    return out


def _renumber_if_needed(annotations: list[dict]) -> None:
    ids = [a["id"] for a in annotations]
    valid = all(isinstance(i, int) and i >= 1 for i in ids) and len(set(ids)) == len(ids)
    if not valid:
        for new_id, ann in enumerate(annotations, start=1):
            ann["id"] = new_id


def prepare_coco(
    annotations_path: Path,
    image_root: Path,
    problems: ProblemLog,
    *,
    decode_images: bool = True,
    workers: int = 4,
) -> dict:
    """Validate a COCO instances JSON against its image folder and return the normalised dict.

    Each bad entry goes to `problems`: an `InputError` naming the file and the entry, or a logged
    skip. A skipped image takes its annotations with it.
    """
    annotations_path = Path(annotations_path)
    coco = load_json(annotations_path)
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise InputError(
            annotations_path,
            "",
            "not a COCO instances file: needs lists images, annotations, categories",
        )
    categories = coco["categories"]
    category_ids = {c["id"] for c in categories if isinstance(c, dict) and "id" in c}
    listed = _check_image_entries(annotations_path, coco["images"], problems)
    images = _check_image_files(
        annotations_path, listed, Path(image_root), problems, decode_images, workers
    )
    by_id = {image["id"]: image for image in images}
    dropped = {image["id"] for image in listed} - set(by_id)
    annotations = _check_annotations(
        annotations_path, coco["annotations"], by_id, dropped, category_ids, problems
    )
    normalised = [_normalise_annotation(a, by_id[a["image_id"]]) for a in annotations]
    normalised.sort(key=lambda a: (a["image_id"], a["id"] if isinstance(a["id"], int) else 0))
    _renumber_if_needed(normalised)
    return {
        "info": coco.get("info", {}),
        "licenses": coco.get("licenses", []),
        "images": [
            {k: image[k] for k in ("id", "file_name", "width", "height")}
            for image in sorted(images, key=lambda im: im["id"])
        ],
        "annotations": normalised,
        "categories": categories,
        "icmflow": {"image_root": str(image_root), "source": str(annotations_path)},
    }


def annotations_by_image(dataset: dict) -> dict[int, list[dict]]:
    """Map every image id (also those without objects) to its annotations."""
    grouped: dict[int, list[dict]] = {image["id"]: [] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        grouped[ann["image_id"]].append(ann)
    return grouped
