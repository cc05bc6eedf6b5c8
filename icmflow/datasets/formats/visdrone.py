"""VisDrone-DET 2019: `images/*.jpg` with one `annotations/*.txt` per image, boxes only.

One row per object: `bbox_left,bbox_top,bbox_width,bbox_height,score,object_category,truncation,
occlusion`, integers in pixels of the stored image (a trailing comma is allowed; an empty file
is an image without objects). Categories 1–10 are the classes, 11 is *others* (both become
ordinary instances under VisDrone's own ids), 0 is an *ignored region*: an area whose objects are
not annotated (dense crowds, tiny vehicles). A score of 0 marks a box that VisDrone's evaluation
ignores; ignored regions have score 0. Truncation and occlusion must be integers and are not used
otherwise. Without segmentations, an object's mask region is its box.

`ignored_regions` decides what happens to rows with category 0 or score 0:

- `crowd` (default): they become `iscrowd: 1` annotations (category 0 `ignored-region`, or the
  box's class). COCO evaluation ignores detections inside crowd regions, as VisDrone's does, and
  `masks.crowd` decides their pixels: `include` (its default) makes them object pixels, because
  they are full of objects that a detector still sees and that only the annotators skipped;
  `exclude` leaves them to the background.
- `drop`: they are left out: background in the masks and absent from evaluation.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from icmflow.core.errors import ProblemLog
from icmflow.core.files import write_text
from icmflow.datasets.coco import RawDataset
from icmflow.datasets.formats.base import FORMATS, DatasetFormat, IgnoredRegionsOptions
from icmflow.datasets.images import write_png
from icmflow.datasets.layouts import (
    IgnoredRegions,
    RawBuilder,
    ignored_region_counts,
    pair_with_labels,
    read_headers,
    read_rows,
)

CATEGORY_NAMES = (
    "ignored-region",
    "pedestrian",
    "people",
    "bicycle",
    "car",
    "van",
    "truck",
    "tricycle",
    "awning-tricycle",
    "bus",
    "motor",
    "others",
)
CATEGORIES = [
    {"id": i, "name": name, "supercategory": "visdrone"} for i, name in enumerate(CATEGORY_NAMES)
]
FIELDS = (
    "bbox_left",
    "bbox_top",
    "bbox_width",
    "bbox_height",
    "score",
    "object_category",
    "truncation",
    "occlusion",
)
IGNORED_CATEGORY = 0


def _parse_row(line: str) -> list[int] | str:
    """The row's eight integers, or why it is not a VisDrone-DET row."""
    values = line.strip().split(",")
    if values[-1] == "":
        values.pop()  # some VisDrone files end rows with a comma
    if len(values) != len(FIELDS):
        return (
            f"{len(values)} values, VisDrone-DET rows have {len(FIELDS)}: {','.join(FIELDS)} "
            "(a short last row means the file is truncated: fetch it again)"
        )
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        return f"values must be integers, got {line.strip()!r}"
    if numbers[4] not in (0, 1):
        return f"score must be 0 or 1 in ground truth, got {numbers[4]} (is this a results file?)"
    return numbers


def _annotation(
    line: str, ignored_regions: IgnoredRegions, counts: dict[str, int]
) -> dict | str | None:
    """The row as a box annotation, why it is bad, or None for a dropped ignored region."""
    row = _parse_row(line)
    if isinstance(row, str):
        return row
    left, top, width, height, score, category = row[:6]
    ignored = category == IGNORED_CATEGORY or score == 0
    if ignored:
        counts["ignored_regions"] += 1
        if ignored_regions == "drop":
            return None
    return {
        "category_id": category,
        "bbox": [float(left), float(top), float(width), float(height)],
        "segmentation": [],
        "iscrowd": int(ignored),
    }


def read_visdrone(
    annotations: Path,
    images: Path,
    problems: ProblemLog,
    *,
    ignored_regions: IgnoredRegions = "crowd",
) -> RawDataset:
    """One VisDrone-DET split: `images` and its `annotations` folder."""
    pairs = pair_with_labels(images, annotations, problems, label_required=True)
    headers = read_headers(images, [image for image, _ in pairs], problems, refuse_orientation=True)
    counts = {"ignored_regions": 0}
    parse = partial(_annotation, ignored_regions=ignored_regions, counts=counts)
    builder = RawBuilder()
    for image, label in tqdm(pairs, desc=f"read {annotations}", unit="img"):
        if image not in headers:
            continue
        assert label is not None  # label_required
        rows = read_rows(label, problems, parse)
        if rows is not None:
            builder.add(image, headers[image], (str(images / image), ""), rows)
    return builder.build(
        annotations,
        "visdrone",
        CATEGORIES,
        "VisDrone-DET's categories",
        ignored_region_counts(ignored_regions, counts["ignored_regions"]),
    )


class VisDroneOptions(IgnoredRegionsOptions):
    format: Literal["visdrone"]


FORMATS.register("visdrone")(DatasetFormat(VisDroneOptions, read_visdrone))


def write_visdrone(out: Path, coco: dict, pixels: list[np.ndarray]) -> None:
    """Write `out/images/<stem>.png` and `out/annotations/<stem>.txt` from a COCO dict.

    Category ids must be VisDrone's; crowd annotations become score-0 rows; boxes are rounded to
    whole pixels.
    """
    rows: dict[int, list[str]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        box = ",".join(str(round(v)) for v in ann["bbox"])
        score = 0 if ann["iscrowd"] else 1
        rows[ann["image_id"]].append(f"{box},{score},{ann['category_id']},0,0\n")
    (out / "images").mkdir(parents=True, exist_ok=True)
    pairs = list(zip(coco["images"], pixels, strict=True))
    for image, rgb in tqdm(pairs, desc=f"write visdrone {out.name}", unit="img"):
        stem = Path(image["file_name"]).stem
        write_png(out / "images" / f"{stem}.png", rgb)
        write_text(out / "annotations" / f"{stem}.txt", "".join(rows[image["id"]]))
