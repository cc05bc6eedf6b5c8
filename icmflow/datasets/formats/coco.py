"""COCO: an instances JSON (`annotations`) and its image folder (`images`), read as they are.

A split may list several instances JSONs (`annotations: [a.json, b.json]`, e.g. the parts of an
export): they are merged into one, in the order listed, before `normalise` checks it.

- Categories: the union of the files' categories. One id must have one name in every file, and
  one name one id (else its annotations would be two classes or one class two ways): a conflict
  is an error naming both files, never skipped.
- Images: an image (its `file_name`) listed in two files is an error naming both entries: a
  split lists each image once. Image ids are kept when no two files share one; otherwise every
  file after the first has its image ids (and its annotations' `image_id`) shifted by the
  largest image id of the files before it, so they stay unique and each one says which file it
  came from. `RawDataset.counts` records how many images were renumbered.
- Annotation ids are renumbered by `normalise` when they collide, as within one file.
- `info` and `licenses` are the first file's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import RawDataset, check_categories, read_coco_json
from icmflow.datasets.formats.base import FORMATS, DatasetFormat, FormatOptions


class CocoOptions(FormatOptions):
    format: Literal["coco"] = "coco"
    several_annotation_files: ClassVar[bool] = True


def read_coco(annotations: Path | list[Path], images: Path, problems: ProblemLog) -> RawDataset:
    """One split (one instances JSON or several, merged); `normalise` checks it against
    `images`."""
    if not isinstance(annotations, list):
        return read_coco_json(annotations)
    parts = [read_coco_json(path) for path in annotations]
    return parts[0] if len(parts) == 1 else merge_coco(parts)


def _merged_categories(parts: list[RawDataset]) -> list[dict]:
    by_id: dict[int, tuple[dict, Path]] = {}
    by_name: dict[str, tuple[int, Path]] = {}
    for part in parts:
        check_categories(part)  # ids and names, within the file
        for category in part.coco["categories"]:
            key, name = category["id"], category["name"]
            if key in by_id and by_id[key][0]["name"] != name:
                first, where = by_id[key]
                raise InputError(
                    part.source,
                    f"category id {key}",
                    f"named {name!r} here but {first['name']!r} in {where}: the merged split's "
                    "annotations of this id would be two classes; make the files' categories agree",
                )
            if name in by_name and by_name[name][0] != key:
                other, where = by_name[name]
                raise InputError(
                    part.source,
                    f"category {name!r}",
                    f"has id {key} here but {other} in {where}: one class would have two ids; "
                    "make the files' categories agree",
                )
            by_id.setdefault(key, (category, part.source))
            by_name.setdefault(name, (key, part.source))
    return [category for category, _ in by_id.values()]


def _image_ids(part: RawDataset) -> list[int]:
    return [
        image["id"]
        for image in part.coco["images"]
        if isinstance(image, dict) and type(image.get("id")) is int
    ]


def _offsets(parts: list[RawDataset]) -> list[int]:
    """Each file's image id shift: none when no two files share an id, else the largest id of
    the files before it."""
    ids = [set(_image_ids(part)) for part in parts]
    if sum(map(len, ids)) == len(set().union(*ids)):
        return [0] * len(parts)
    offsets, largest = [], 0
    for found in ids:
        offsets.append(largest)
        largest += max(found, default=0)
    return offsets


def _refuse_repeated_images(parts: list[RawDataset]) -> None:
    seen: dict[str, str] = {}
    for part in parts:
        for index, image in enumerate(part.coco["images"]):
            name = image.get("file_name") if isinstance(image, dict) else None
            if not isinstance(name, str):
                continue  # normalise names the malformed entry
            file, entry = part.image_origin(index)
            if name in seen:
                raise InputError(
                    file,
                    entry,
                    f"image {name!r} is listed in {seen[name]} too: a split lists each image "
                    "once; remove it from one of the files",
                )
            seen[name] = f"{file} {entry}"


def _shifted(item: Any, key: str, offset: int) -> Any:
    if offset and isinstance(item, dict) and type(item.get(key)) is int:
        return {**item, key: item[key] + offset}
    return item


def merge_coco(parts: list[RawDataset]) -> RawDataset:
    """Several instances JSONs of one split as one (module doc: the rules)."""
    categories = _merged_categories(parts)
    _refuse_repeated_images(parts)
    offsets = _offsets(parts)
    images, annotations, image_origins, annotation_origins = [], [], [], []
    for part, offset in zip(parts, offsets, strict=True):
        images += [_shifted(image, "id", offset) for image in part.coco["images"]]
        annotations += [_shifted(a, "image_id", offset) for a in part.coco["annotations"]]
        image_origins += [part.image_origin(i) for i in range(len(part.coco["images"]))]
        annotation_origins += [
            part.annotation_origin(i) for i in range(len(part.coco["annotations"]))
        ]
    first = parts[0].coco
    coco = {
        "info": first.get("info", {}),
        "licenses": first.get("licenses", []),
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    renumbered = sum(len(p.coco["images"]) for p, o in zip(parts, offsets, strict=True) if o)
    return RawDataset(
        coco,
        parts[0].source,
        image_origins=image_origins,
        annotation_origins=annotation_origins,
        categories_from="the files' categories",
        counts={"annotation_files": len(parts), "images_renumbered": renumbered},
    )


FORMATS.register("coco")(DatasetFormat(CocoOptions, read_coco))
