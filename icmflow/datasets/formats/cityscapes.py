"""Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/<split>/<city>/...`.

For each image, `<prefix>_gtFine_instanceIds.png` is required and `<prefix>_gtFine_labelIds.png`,
when present, must agree with it. An instanceIds pixel holds `label id × 1000 + k` for instance
k of a class with instances, and the plain label id (< 1000) elsewhere. Every instance id becomes
one COCO instance whose segmentation is the compressed RLE of exactly its pixels; categories are
Cityscapes' label ids. The object mask is therefore the union of thing-instance pixels.

Thing classes are the eight that Cityscapes evaluates (person, rider, car, truck, bus, train,
motorcycle, bicycle). Pixels that are neither clean instances nor background are *ignored
regions*: thing pixels that carry no instance id (groups, e.g. `cargroup`, labelled with the
plain label id) and instances of caravan and trailer (which have instance ids but which
Cityscapes' evaluation ignores). `ignored_regions` decides them:

- `crowd` (default): one `iscrowd: 1` annotation per group class and per caravan/trailer
  instance. COCO evaluation ignores detections in crowd regions, as Cityscapes' does, and
  `masks.crowd` decides their pixels: `include` (its default) makes them object pixels (they
  are cars, people, ... that were only annotated together), `exclude` leaves them to the
  background.
- `drop`: they are left out: background in the masks and absent from evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from icmflow.core.errors import InputError, MissingInputError, ProblemLog
from icmflow.datasets.coco import Origin, RawDataset
from icmflow.datasets.formats.base import FORMATS, DatasetFormat, IgnoredRegionsOptions
from icmflow.datasets.images import undecodable, write_png
from icmflow.datasets.layouts import (
    IgnoredRegions,
    RawBuilder,
    ignored_region_counts,
    list_files,
    read_headers,
    require_folder,
)
from icmflow.datasets.rle import annotation_rle, rle_area_and_bbox

THINGS = {
    24: ("person", "human"),
    25: ("rider", "human"),
    26: ("car", "vehicle"),
    27: ("truck", "vehicle"),
    28: ("bus", "vehicle"),
    31: ("train", "vehicle"),
    32: ("motorcycle", "vehicle"),
    33: ("bicycle", "vehicle"),
}
IGNORED_THINGS = {29: ("caravan", "vehicle"), 30: ("trailer", "vehicle")}
"""Classes with instance ids that Cityscapes' evaluation ignores."""
CATEGORIES = [
    {"id": label, "name": name, "supercategory": group}
    for label, (name, group) in sorted({**THINGS, **IGNORED_THINGS}.items())
]
MAX_LABEL_ID = 33
INSTANCE_BASE = 1000
IMAGE_SUFFIX = "_leftImg8bit.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
BACKGROUND = 7
"""The label id (`road`) that `write_cityscapes` gives pixels without objects."""


def _label_file(annotations: Path, image: Path, suffix: str) -> Path:
    return annotations / image.parent / (image.name.removesuffix(IMAGE_SUFFIX) + suffix)


def _read_ids(path: Path, shape: tuple[int, int]) -> np.ndarray | str:
    """A single-channel label image as an integer array, or why it cannot be one."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
                return f"{path} is a {image.mode} image; Cityscapes ids are single-channel"
            ids = np.asarray(image).astype(np.int64)
    except Exception as err:  # PIL raises many types for corrupt files
        return undecodable(path, err)
    if ids.shape != shape:
        return (
            f"{path} is {ids.shape[1]}x{ids.shape[0]} but its image is {shape[1]}x{shape[0]}: "
            "label and image must be the same size"
        )
    return ids


def _ids_problem(instance_file: Path, ids: np.ndarray, label_file: Path) -> str | None:
    stray = [v for v in np.unique(ids).tolist() if MAX_LABEL_ID < v < INSTANCE_BASE or v < 0]
    if stray:
        return (
            f"pixel value(s) {stray[:5]} are neither label ids (0..{MAX_LABEL_ID}) nor instance "
            "ids (label id × 1000 + k): is this an instanceIds file?"
        )
    if not label_file.is_file():
        return None
    labels = _read_ids(label_file, ids.shape)
    if isinstance(labels, str):
        return labels
    disagree = int((np.where(ids >= INSTANCE_BASE, ids // INSTANCE_BASE, ids) != labels).sum())
    if disagree:
        return (
            f"{disagree} pixel(s) disagree with {label_file} (instance id // 1000 must be the "
            f"label id): the two files belong to different frames or one is corrupt"
        )
    return None


def _region(ids: np.ndarray, value: int, category: int, crowd: bool) -> dict:
    rle = mask_utils.encode(np.asfortranarray((ids == value).astype(np.uint8)))
    area, bbox = rle_area_and_bbox(rle)
    return {
        "category_id": category,
        "segmentation": {"size": list(ids.shape), "counts": rle["counts"].decode("ascii")},
        "area": area,
        "bbox": bbox,
        "iscrowd": int(crowd),
    }


def _annotations(
    ids: np.ndarray, origin_file: str, ignored_regions: IgnoredRegions, counts: dict[str, int]
) -> list[tuple[dict, Origin]]:
    found = []
    for value in np.unique(ids).tolist():
        instance = value >= INSTANCE_BASE
        category = value // INSTANCE_BASE if instance else value
        ignored = category in IGNORED_THINGS or (not instance and category in THINGS)
        if not (instance or ignored):
            continue  # stuff: background
        if ignored:
            counts["ignored_regions"] += 1
            if ignored_regions == "drop":
                continue
        entry = f"instance id {value}" if instance else f"pixels of label id {value} (group)"
        found.append((_region(ids, value, category, ignored), (origin_file, entry)))
    return found


def read_cityscapes(
    annotations: Path,
    images: Path,
    problems: ProblemLog,
    *,
    ignored_regions: IgnoredRegions = "crowd",
) -> RawDataset:
    """One split: `images` (leftImg8bit/<split>) and `annotations` (gtFine/<split>)."""
    require_folder(images, "image")
    require_folder(annotations, "annotation")
    frames = [p for p in list_files(images, frozenset({".png"})) if p.name.endswith(IMAGE_SUFFIX)]
    for instance_file in list_files(annotations, frozenset({".png"})):
        if not instance_file.name.endswith(INSTANCE_SUFFIX):
            continue
        image = instance_file.parent / (
            instance_file.name.removesuffix(INSTANCE_SUFFIX) + IMAGE_SUFFIX
        )
        if not (images / image).is_file():
            problems.report(
                str(annotations / instance_file),
                "",
                f"no image for it: {images / image} is missing; restore it or remove the labels",
            )
    headers = read_headers(images, frames, problems, refuse_orientation=False)
    counts = {"ignored_regions": 0}
    builder = RawBuilder()
    for image in tqdm(frames, desc=f"read {annotations}", unit="img"):
        if image not in headers:
            continue
        instance_file = _label_file(annotations, image, INSTANCE_SUFFIX)
        if not instance_file.is_file():
            problems.report(
                str(images / image),
                "",
                f"its instance labels {instance_file} are missing; restore them",
            )
            continue
        header = headers[image]
        ids = _read_ids(instance_file, (header.height, header.width))
        problem = (
            ids
            if isinstance(ids, str)
            else _ids_problem(instance_file, ids, _label_file(annotations, image, LABEL_SUFFIX))
        )
        if problem:
            problems.report(str(instance_file), "", problem, also_skipped="its image is left out")
            continue
        found = _annotations(ids, str(instance_file), ignored_regions, counts)
        builder.add(image, header, (str(images / image), ""), found)
    return builder.build(
        annotations,
        "cityscapes",
        CATEGORIES,
        "Cityscapes' classes with instances",
        ignored_region_counts(ignored_regions, counts["ignored_regions"]),
    )


class CityscapesOptions(IgnoredRegionsOptions):
    format: Literal["cityscapes"]


FORMATS.register("cityscapes")(DatasetFormat(CityscapesOptions, read_cityscapes))


def write_cityscapes(
    out: Path, split: str, coco: dict, pixels: list[np.ndarray], city: str = "sample"
) -> None:
    """Write `out/leftImg8bit/<split>/<city>/` and `out/gtFine/<split>/<city>/` from a COCO dict.

    Category ids must be Cityscapes label ids of classes with instances. Annotations are painted
    in order (a later one covers an earlier one); crowd annotations become group pixels (the
    plain label id), the rest instances; pixels without objects get `BACKGROUND`.
    """
    image_dir = out / "leftImg8bit" / split / city
    label_dir = out / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    pairs = list(zip(coco["images"], pixels, strict=True))
    for image, rgb in tqdm(pairs, desc=f"write cityscapes {split}", unit="img"):
        h, w = image["height"], image["width"]
        ids = np.full((h, w), BACKGROUND, dtype=np.uint16)
        instances: dict[int, int] = {}
        for ann in by_image[image["id"]]:
            mask = mask_utils.decode(annotation_rle(ann, h, w)).astype(bool)
            label = ann["category_id"]
            if ann["iscrowd"]:
                ids[mask] = label
            else:
                ids[mask] = label * INSTANCE_BASE + instances.get(label, 0)
                instances[label] = instances.get(label, 0) + 1
        labels = np.where(ids >= INSTANCE_BASE, ids // INSTANCE_BASE, ids).astype(np.uint8)
        prefix = f"{city}_{image['id']:06d}_000019"
        write_png(image_dir / f"{prefix}{IMAGE_SUFFIX}", rgb)
        Image.fromarray(ids).save(label_dir / f"{prefix}{INSTANCE_SUFFIX}")
        Image.fromarray(labels).save(label_dir / f"{prefix}{LABEL_SUFFIX}")


TRAIN_CLASSES = {
    7: (0, "road"),
    8: (1, "sidewalk"),
    11: (2, "building"),
    12: (3, "wall"),
    13: (4, "fence"),
    17: (5, "pole"),
    19: (6, "traffic light"),
    20: (7, "traffic sign"),
    21: (8, "vegetation"),
    22: (9, "terrain"),
    23: (10, "sky"),
    24: (11, "person"),
    25: (12, "rider"),
    26: (13, "car"),
    27: (14, "truck"),
    28: (15, "bus"),
    31: (16, "train"),
    32: (17, "motorcycle"),
    33: (18, "bicycle"),
}
"""Label id -> (train id, name): the 19 classes Cityscapes evaluates (its `labels.py`); every
other label id has train id `IGNORE_TRAIN_ID` (`ignoreInEval`)."""
IGNORE_TRAIN_ID = 255
TRAIN_CATEGORIES = [
    {"id": train_id, "name": name} for train_id, name in sorted(TRAIN_CLASSES.values())
]
THING_TRAIN_IDS = frozenset(TRAIN_CLASSES[label][0] for label in THINGS)
_TO_TRAIN = np.full(INSTANCE_BASE, IGNORE_TRAIN_ID, dtype=np.uint8)
_TO_TRAIN[list(TRAIN_CLASSES)] = [train_id for train_id, _ in TRAIN_CLASSES.values()]
_TO_LABEL = np.zeros(256, dtype=np.uint8)
_TO_LABEL[[train_id for train_id, _ in TRAIN_CLASSES.values()]] = list(TRAIN_CLASSES)


def instance_ids(annotations: Path, file_name: str, shape: tuple[int, int]) -> np.ndarray:
    """The instanceIds (H×W int64) of image `file_name` (relative to `leftImg8bit/<split>`;
    a coded copy's `.png` name too) under `annotations` (`gtFine/<split>`), checked as
    `read_cityscapes` checks them (against the labelIds file when there is one)."""
    image = Path(file_name).with_suffix(".png")
    source = _label_file(annotations, image, INSTANCE_SUFFIX)
    if not source.is_file():
        raise MissingInputError(f"{source}: missing: the instance labels of {file_name}")
    ids = _read_ids(source, shape)
    problem = (
        ids
        if isinstance(ids, str)
        else _ids_problem(source, ids, _label_file(annotations, image, LABEL_SUFFIX))
    )
    if problem:
        raise InputError(source, "", problem)
    return ids


def label_ids(annotations: Path, file_name: str, shape: tuple[int, int]) -> np.ndarray:
    """The label ids (H×W int64) of image `file_name` (as `instance_ids`): its labelIds
    file, or its instanceIds file (which holds the same label ids, × 1000 on instances)."""
    image = Path(file_name).with_suffix(".png")
    source = _label_file(annotations, image, LABEL_SUFFIX)
    if not source.is_file():
        ids = instance_ids(annotations, file_name, shape)
        return np.where(ids >= INSTANCE_BASE, ids // INSTANCE_BASE, ids)
    ids = _read_ids(source, shape)
    if isinstance(ids, str):
        raise InputError(source, "", ids)
    if ids.size and not 0 <= int(ids.min()) <= int(ids.max()) <= MAX_LABEL_ID:
        raise InputError(source, "", f"label ids outside 0..{MAX_LABEL_ID}: not a labelIds file")
    return ids


def to_train_ids(ids: np.ndarray) -> np.ndarray:
    """Label ids -> train ids 0..18, `IGNORE_TRAIN_ID` for the rest."""
    return _TO_TRAIN[np.clip(ids, 0, INSTANCE_BASE - 1)]


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Train ids -> label ids, Cityscapes' result format (0, `unlabeled`, for anything else)."""
    return _TO_LABEL[np.clip(train_ids, 0, 255)]
