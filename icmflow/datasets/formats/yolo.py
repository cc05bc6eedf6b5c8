"""YOLO / ultralytics layout: `images/<split>/*.jpg` with `labels/<split>/*.txt` and a dataset YAML.

Label rows are `class cx cy w h` (a box) or `class x1 y1 x2 y2 x3 y3 ...` (a polygon, ultralytics'
segment format), coordinates normalised by the image's width and height; the two kinds may mix.
Category ids are the class indices and their names come from the YAML's `names` (a list, or a
mapping from index to name). An image without a label file has no objects, as ultralytics reads
it. Coordinates are converted to pixels of the stored image (`images.py`), rounded to 1/1000
pixel; a box's region is the box, a polygon's bbox is its extent. Ultralytics applies EXIF
orientation when it loads images, so images with an orientation tag are refused (see
`layouts.read_headers`) rather than masked in the wrong orientation. YOLO has no crowd
annotations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field
from tqdm import tqdm

from icmflow.core.errors import InputError, ProblemLog
from icmflow.core.files import write_text
from icmflow.datasets.coco import RawDataset
from icmflow.datasets.file_names import label_file, stem
from icmflow.datasets.formats.base import FORMATS, DatasetFormat, FormatOptions
from icmflow.datasets.images import write_png
from icmflow.datasets.layouts import RawBuilder, pair_with_labels, read_headers, read_rows

DECIMALS = 6
"""Digits written after the point by `write_yolo`, as ultralytics writes them."""


YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML has it: Python's takes minutes on a deeply nested file
(libyaml refuses it at once)."""


def read_names(path: Path) -> dict[int, str]:
    """Class index -> name from an ultralytics dataset YAML."""
    try:
        config = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=YAML_LOADER)
    except FileNotFoundError:
        raise InputError(
            path, "", "dataset YAML not found; check `dataset_yaml` in the params file"
        ) from None
    except UnicodeDecodeError as err:
        raise InputError(path, f"byte {err.start}", "not UTF-8 text: is it a YAML file?") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = " ".join(str(getattr(err, "problem", None) or err).split())  # one line
        raise InputError(
            path,
            f"line {mark.line + 1} column {mark.column + 1}" if mark else "",
            f"not valid YAML ({problem}); fix or export it again",
        ) from None
    except RecursionError:
        raise InputError(path, "", "YAML nested too deeply to read: not a dataset YAML") from None
    names = config.get("names") if isinstance(config, dict) else None
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not (
        isinstance(names, dict)
        and names
        and all(isinstance(k, int) and k >= 0 and isinstance(v, str) for k, v in names.items())
    ):
        raise InputError(
            path,
            "names",
            "needs `names`: a list of class names or a mapping {index: name}",
        )
    if "nc" in config and config["nc"] != len(names):
        raise InputError(path, "nc", f"nc is {config['nc']} but names lists {len(names)} classes")
    return names


def _parse_row(line: str, width: int, height: int) -> dict | str:
    """The row as a COCO annotation in pixels, or why it is not a YOLO row."""
    values = line.split()
    n = len(values)
    if n != 5 and not (n >= 7 and n % 2 == 1):
        return (
            f"{n} values; a YOLO row is `class cx cy w h` (5) or a polygon "
            "`class x1 y1 x2 y2 x3 y3 ...` (7 or more, odd); a short row means the file is "
            "truncated"
        )
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return f"values must be numbers, got {' '.join(values)!r}"
    if not all(math.isfinite(v) for v in numbers):
        return f"values must be finite, got {' '.join(values)!r}"
    label, coords = numbers[0], numbers[1:]
    if not (label.is_integer() and label >= 0):
        return f"class must be a non-negative integer, got {values[0]!r}"
    annotation: dict = {"category_id": int(label), "iscrowd": 0}
    if n == 5:
        cx, cy, w, h = coords
        box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        annotation.update(segmentation=[], bbox=[round(v, 3) for v in box])
    else:
        polygon = [round(v * (width if k % 2 == 0 else height), 3) for k, v in enumerate(coords)]
        xs, ys = polygon[0::2], polygon[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        annotation.update(segmentation=[polygon], bbox=[round(v, 3) for v in box])
    return annotation


def read_yolo(
    annotations: Path, images: Path, problems: ProblemLog, *, dataset_yaml: Path
) -> RawDataset:
    """One split: `images` (images/<split>) and `annotations` (labels/<split>)."""
    names = read_names(dataset_yaml)
    pairs = pair_with_labels(images, annotations, problems, label_required=False)
    headers = read_headers(images, [image for image, _ in pairs], problems, refuse_orientation=True)
    builder = RawBuilder()
    unlabelled = 0
    for image, label in tqdm(pairs, desc=f"read {annotations}", unit="img"):
        if image not in headers:
            continue
        size = {"width": headers[image].width, "height": headers[image].height}
        rows = [] if label is None else read_rows(label, problems, partial(_parse_row, **size))
        if rows is not None:
            builder.add(image, headers[image], (str(images / image), ""), rows)
            unlabelled += label is None
    categories = [{"id": k, "name": v, "supercategory": "yolo"} for k, v in sorted(names.items())]
    return builder.build(
        annotations,
        "yolo",
        categories,
        f"names in {dataset_yaml}",
        {"images_without_label_file": unlabelled},
    )


class YoloOptions(FormatOptions):
    format: Literal["yolo"]
    dataset_yaml: str = Field(description="ultralytics dataset YAML with `names`, from the root")

    def reader_options(self, root: Path) -> dict[str, Any]:
        return {"dataset_yaml": root / self.dataset_yaml}


FORMATS.register("yolo")(DatasetFormat(YoloOptions, read_yolo))


def yolo_classes(categories: list[dict]) -> dict[int, int]:
    """Category id -> YOLO class index: positions in sorted id order (identity for 0, 1, ...)."""
    return {cid: index for index, cid in enumerate(sorted(c["id"] for c in categories))}


def label_row(index: int, coords: Sequence[float]) -> str:
    """A label row: the class index and normalised coordinates, as ultralytics writes them."""
    return " ".join([str(index), *(f"{v:.{DECIMALS}f}" for v in coords)])


def box_row(ann: dict, width: int, height: int, index: int) -> str | None:
    """The annotation's box as a row, clipped to the image; None when nothing is left."""
    x, y, w, h = ann["bbox"]
    x0, x1 = min(max(x / width, 0), 1), min(max((x + w) / width, 0), 1)
    y0, y1 = min(max(y / height, 0), 1), min(max((y + h) / height, 0), 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return label_row(index, [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])


def image_rows(annotations: list[dict], width: int, height: int, classes: dict[int, int]) -> str:
    """One image's label file: polygon rows when every object is a single polygon, else box
    rows (ultralytics misreads a file that mixes the two). Crowd regions are left out."""
    objects = [ann for ann in annotations if not ann["iscrowd"]]
    polygons = all(
        isinstance(a["segmentation"], list) and len(a["segmentation"]) == 1 for a in objects
    )
    rows = []
    for ann in objects:
        index = classes[ann["category_id"]]
        if polygons:
            points = ann["segmentation"][0]
            rows.append(
                label_row(index, [v / (width, height)[k % 2] for k, v in enumerate(points)])
            )
        elif row := box_row(ann, width, height, index):
            rows.append(row)
    return "".join(f"{row}\n" for row in rows)


def write_yolo_labels(out: Path, split: str, coco: dict) -> None:
    """The label file of every image `out/images/<split>/<file_name>` of a COCO dict, where
    ultralytics looks for it (`file_names.label_file`: `out/labels/<split>/<stem>.txt`, folders
    kept), with `yolo_classes` indices (`image_rows`)."""
    classes = yolo_classes(coco["categories"])
    annotations: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        annotations[ann["image_id"]].append(ann)
    for image in coco["images"]:
        rows = image_rows(annotations[image["id"]], image["width"], image["height"], classes)
        write_text(out / label_file(f"/images/{split}/{image['file_name']}").lstrip("/"), rows)


def write_yolo(out: Path, split: str, coco: dict, pixels: list[np.ndarray]) -> None:
    """`out/images/<split>/<stem>.png` (folders kept) and their labels (`write_yolo_labels`)
    from a COCO dict."""
    coco = {
        **coco,
        "images": [{**im, "file_name": f"{stem(im['file_name'])}.png"} for im in coco["images"]],
    }
    pairs = list(zip(coco["images"], pixels, strict=True))
    for image, rgb in tqdm(pairs, desc=f"write yolo {split}", unit="img"):
        write_png(out / "images" / split / image["file_name"], rgb)
    write_yolo_labels(out, split, coco)


def yolo_names(categories: list[dict]) -> dict[int, str]:
    """YOLO class index -> category name (`yolo_classes` order)."""
    names = {c["id"]: c["name"] for c in categories}
    return {index: names[cid] for cid, index in yolo_classes(categories).items()}


def write_dataset_yaml(path: Path, names: dict[int, str], splits: dict[str, str]) -> None:
    """An ultralytics dataset YAML: one folder per split (relative to the YAML: without `path`,
    ultralytics resolves them there; `path: .` would mean the working directory), `names`."""
    config = {**splits, "names": names}
    write_text(path, yaml.safe_dump(config, sort_keys=False))
