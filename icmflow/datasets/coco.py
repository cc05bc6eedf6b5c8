"""The normalised schema every reader produces: COCO instances, validated entry by entry.

A reader (this module's `read_coco_json`, or `visdrone`, `cityscapes`, `yolo`) turns its layout
into a `RawDataset`: a COCO dict plus, for each entry, the file and line it came from.
`normalise` validates that dict against the image folder and returns the normalised dataset,
so masks, training and evaluation never see a dataset-specific detail.

The normalised schema is plain COCO (pycocotools and downstream tools read it unchanged) with:
images sorted by id, every annotation carrying `bbox`, `area` and `iscrowd`, annotation ids >= 1
(pycocotools' COCOeval treats id 0 as unmatched), box-only annotations with an empty
`segmentation` (their region is the box), and an `icmflow` block naming the image root, the
source and its format.

Rules, whatever the reader:

- Geometry outside the image by more than `EDGE_TOLERANCE` pixels is rejected, not clipped: a
  polygon or box far outside its image usually means the annotation belongs to another image or
  width and height are mixed up, and clipping would hide that. Within the tolerance it is kept;
  masks clip it to the image.
- An instance that covers no pixel (zero area) is rejected. Polygons must be numbers, RLEs must
  cover their image exactly (pycocotools trusts them and hangs or returns garbage otherwise),
  `iscrowd` is 0 or 1, and a given `bbox` or `area` must agree with the segmentation
  (`_bbox_problem`, `_area_problem`); missing ones are computed from it.
- A `file_name` must stay inside its image folder, and no two images may share a stem: outputs
  are named after it (`file_names`).
- Categories need an integer id of their own and a name; a split needs images (the prepare
  stage). Neither is ever skipped.
- Each bad entry is an `InputError` naming the file and the entry, or (`on_error: skip`) a logged
  skip. A skipped annotation takes its image with it, and duplicate image ids drop every image
  sharing the id: otherwise an image's mask would silently miss an object or gain another
  image's objects.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.file_names import file_name_problem, stem
from icmflow.datasets.images import SWAPS_SIDES, read_header, read_rgb, undecodable
from icmflow.datasets.rle import annotation_rle, counts_problem, rle_area_and_bbox, runs_problem

EDGE_TOLERANCE = 1.0
"""Pixels by which polygon and box coordinates may lie outside the image (COCO rounds so)."""

Origin = tuple[str, str]
"""(file, entry) naming where an image or annotation entry was read."""


@dataclass
class RawDataset:
    """A reader's output: a COCO dict before validation, and where each of its entries came from.

    `image_origins[i]` and `annotation_origins[j]` name the file and entry that
    `coco["images"][i]` and `coco["annotations"][j]` were read from, so problems found during
    validation name them; None: positions in the COCO JSON `source`. `counts` are the reader's
    own tallies for the prepare report (e.g. ignored regions kept as crowd or dropped).
    """

    coco: dict
    source: Path
    format: str = "coco"
    image_origins: list[Origin] | None = None
    annotation_origins: list[Origin] | None = None
    categories_from: str = "the JSON's categories"
    counts: dict[str, int] = field(default_factory=dict)

    def image_origin(self, index: int) -> Origin:
        if self.image_origins is not None:
            return self.image_origins[index]
        return str(self.source), _entry("images", index, self.coco["images"][index], "file_name")

    def annotation_origin(self, index: int) -> Origin:
        if self.annotation_origins is not None:
            return self.annotation_origins[index]
        ann = self.coco["annotations"][index]
        return str(self.source), _entry("annotations", index, ann, "image_id")


def load_json(path: Path) -> Any:
    """Parse a JSON file; a missing or truncated file raises `InputError` naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "", "file not found; check its path in the params file") from None
    except UnicodeDecodeError as err:
        raise InputError(path, f"byte {err.start}", "not UTF-8 text: is it a JSON file?") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            path,
            f"line {err.lineno} column {err.colno}",
            f"invalid JSON ({err.msg}); the file is probably truncated: fetch or export it again",
        ) from None
    except RecursionError:
        raise InputError(
            path, "", "JSON nested too deeply to read: not an annotation file; export it again"
        ) from None


def read_coco_json(path: Path) -> RawDataset:
    """The COCO reader: an instances JSON as it is."""
    coco = load_json(path)
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise InputError(
            path, "", "not a COCO instances file: needs lists images, annotations, categories"
        )
    return RawDataset(coco, Path(path))


def _entry(kind: str, index: int, item: Any, key: str) -> str:
    if not isinstance(item, dict):
        return f"{kind}[{index}]"
    fields = ", ".join(f"{k}={item[k]!r}" for k in ("id", key) if k in item)
    return f"{kind}[{index}] ({fields})"


def _numbers(values: Any) -> list[float] | None:
    """`values` if it is a list of finite numbers, else None.

    Plain Python: annotations are short lists, for which this is several times faster than numpy.
    """
    if not isinstance(values, list):
        return None
    try:
        finite = all(map(math.isfinite, values))
    except (TypeError, OverflowError):  # not numbers; integers too large for a float
        return None
    return values if finite else None


def _rle_problem(rle: dict, width: int, height: int) -> str | None:
    """Why an RLE segmentation does not cover a `width`×`height` image exactly, or None."""
    size, counts = rle.get("size"), rle.get("counts")
    if size != [height, width] or list(map(type, size)) != [int, int]:
        return f"RLE size {size!r} differs from the image's [height, width] [{height}, {width}]"
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
        if sum(counts) != width * height:
            return f"uncompressed RLE counts sum to {sum(counts)}, not {height}*{width}"
        return runs_problem(counts)
    if isinstance(counts, str):
        return counts_problem(counts, height, width)
    return "RLE counts must be a string (compressed) or a list (uncompressed)"


def geometry_problem(annotation: dict, width: int, height: int) -> str | None:
    """Why this annotation's segmentation or box does not fit a `width`×`height` image, or None."""
    lo, hi_x, hi_y = -EDGE_TOLERANCE, width + EDGE_TOLERANCE, height + EDGE_TOLERANCE
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        for k, polygon in enumerate(segmentation):
            coords = _numbers(polygon)
            if coords is None or len(coords) < 6 or len(coords) % 2:
                return f"segmentation polygon {k} must be [x1, y1, x2, y2, ...] with >= 3 points"
            x_min, x_max = min(coords[0::2]), max(coords[0::2])
            y_min, y_max = min(coords[1::2]), max(coords[1::2])
            if x_min < lo or y_min < lo or x_max > hi_x or y_max > hi_y:
                return (
                    f"segmentation polygon {k} spans x {x_min:g}..{x_max:g}, "
                    f"y {y_min:g}..{y_max:g}: outside the {width}x{height} image"
                )
    elif isinstance(segmentation, dict):
        problem = _rle_problem(segmentation, width, height)
        if problem:
            return problem
    elif segmentation is not None:
        return (
            f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}"
        )
    bbox = annotation.get("bbox")  # after the segmentation: its problem says more
    if bbox is not None:
        if _numbers(bbox) is None or len(bbox) != 4:
            return f"bbox must be [x, y, w, h], got {bbox!r}"
        x, y, w, h = bbox
        if w < 0 or h < 0:
            return f"bbox has a negative size: {bbox}"
        if x < lo or y < lo or x + w > hi_x or y + h > hi_y:
            return f"bbox {bbox} lies outside the {width}x{height} image"
    if not segmentation and bbox is None:
        return "annotation has neither a segmentation nor a bbox"
    return None


def _describe_ids(ids: set) -> str:
    ordered = sorted(ids)
    if len(ordered) <= 12:
        return ", ".join(map(str, ordered)) or "none"
    return f"{ordered[0]}..{ordered[-1]} ({len(ordered)} ids)"


def _image_entry_problem(image: Any) -> str | None:
    if not isinstance(image, dict):
        return "image entry must be an object"
    missing = [k for k in ("id", "file_name", "width", "height") if k not in image]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if not all(isinstance(image[k], int) and image[k] > 0 for k in ("width", "height")):
        return "width and height must be positive integers"
    if not isinstance(image["id"], int):
        return "id must be an integer"
    return file_name_problem(image["file_name"])


def _check_image_entries(raw: RawDataset, problems: ProblemLog) -> list[int]:
    """Indices of well-formed image entries whose id no other entry uses."""
    images = raw.coco["images"]
    well_formed = []
    for i, image in enumerate(images):
        problem = _image_entry_problem(image)
        if problem:
            problems.report(*raw.image_origin(i), problem)
        else:
            well_formed.append(i)
    by_id: dict[int, list[int]] = {}
    for i in well_formed:
        by_id.setdefault(images[i]["id"], []).append(i)
    for image_id, indices in by_id.items():
        for i in indices[1:]:
            first = " ".join(raw.image_origin(indices[0]))
            problems.report(
                *raw.image_origin(i),
                f"duplicate image id {image_id} (also {first}): its annotations cannot be "
                "attributed to one image; give every image its own id",
                also_skipped=f"all {len(indices)} images with id {image_id} are left out",
            )
    unique = [i for i in well_formed if len(by_id[images[i]["id"]]) == 1]
    return _refuse_shared_stems(raw, unique, problems)


def _refuse_shared_stems(raw: RawDataset, indices: list[int], problems: ProblemLog) -> list[int]:
    """`indices` less the images whose `file_name` shares its stem with another's: the outputs
    named after them (a coded PNG and bitstream, a YOLO label file) would be one file."""
    images = raw.coco["images"]
    by_stem: dict[str, list[int]] = {}
    for i in indices:
        by_stem.setdefault(stem(images[i]["file_name"]), []).append(i)
    for name, group in by_stem.items():
        if len(group) == 1:
            continue
        files = ", ".join(repr(images[i]["file_name"]) for i in group)
        for i in group:
            problems.report(
                *raw.image_origin(i),
                f"{len(group)} images ({files}) share the stem {name!r}: outputs named after "
                f"them (coded {name}.png and its bitstream, YOLO label {name}.txt) would be one "
                "file; rename all but one",
                also_skipped=f"all {len(group)} images with the stem are left out",
            )
    return [i for i in indices if len(by_stem[stem(images[i]["file_name"])]) == 1]


def _image_file_problem(
    file: Path, width: int, height: int, decode: bool
) -> tuple[str | None, str]:
    """Why the image file does not fit its entry (or None), and a note on its EXIF orientation."""
    if not file.is_file():
        return f"image file not found: {file}", ""
    try:
        header = read_header(file)
        if decode:
            pixels = read_rgb(file)
            actual = (pixels.shape[1], pixels.shape[0])
        else:
            actual = (header.width, header.height)
    except Exception as err:  # PIL raises many types for corrupt files
        return undecodable(file, err), ""
    note = header.orientation_note()
    if actual != (width, height):
        problem = f"image {file} is {actual[0]}x{actual[1]} but the JSON says {width}x{height}"
        if header.orientation in SWAPS_SIDES and actual == (height, width):
            problem += (
                f"; {note}: width, height and annotations must refer to "
                "the stored pixels (or rotate the file's pixels and remove the tag)"
            )
        return problem, note
    return None, note


def _check_image_files(
    raw: RawDataset,
    indices: list[int],
    image_root: Path,
    problems: ProblemLog,
    decode: bool,
    workers: int,
) -> list[int]:
    images = raw.coco["images"]

    def check(i: int) -> tuple[str | None, str]:
        image = images[i]
        return _image_file_problem(
            image_root / image["file_name"], image["width"], image["height"], decode
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(pool.map(check, indices), total=len(indices), desc="check images", unit="img")
        )
    kept = []
    for i, (problem, note) in zip(indices, results, strict=True):
        if problem:
            problems.report(*raw.image_origin(i), problem)
            continue
        if note:
            problems.note(
                *raw.image_origin(i),
                f"{note}: its annotations must refer to the stored pixels, as its size does",
            )
        kept.append(i)
    return kept


def check_categories(raw: RawDataset) -> None:
    """Every category needs an integer id of its own and a name. Never skipped: every
    annotation's class, and the class names of coded datasets and task models, depend on them."""
    seen: dict[int, str] = {}
    for i, category in enumerate(raw.coco["categories"]):
        entry = _entry("categories", i, category, "name")
        if not isinstance(category, dict) or type(category.get("id")) is not int:
            raise InputError(raw.source, entry, "a category needs an integer id")
        name = category.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(
                raw.source,
                entry,
                "a category needs a name (a non-empty string): coded datasets and task models "
                "name their classes by it",
            )
        if category["id"] in seen:
            raise InputError(
                raw.source,
                entry,
                f"duplicate category id {category['id']} (also {seen[category['id']]}): its "
                "annotations could be either class; give every category its own id",
            )
        seen[category["id"]] = entry


def _annotation_problem(ann: dict, image: dict, categories: set, raw: RawDataset) -> str | None:
    if ann["category_id"] not in categories:
        return (
            f"unknown category_id {ann['category_id']} ({raw.categories_from}: "
            f"{_describe_ids(categories)}); correct it or add the category"
        )
    iscrowd = ann.get("iscrowd", 0)
    if not (isinstance(iscrowd, int) and iscrowd in (0, 1)):
        return f"iscrowd must be 0 or 1, got {iscrowd!r}"
    problem = geometry_problem(ann, image["width"], image["height"])
    if problem:
        return problem
    pixels, extent = rle_area_and_bbox(annotation_rle(ann, image["height"], image["width"]))
    if pixels == 0:
        return "the instance covers no pixel (zero area): fix its geometry or remove it"
    return _bbox_problem(ann, extent) or _area_problem(ann, pixels, extent)


def _bbox_problem(ann: dict, pixel_extent: list[float]) -> str | None:
    """Whether a given bbox disagrees with the segmentation beside it: it must be, within
    `EDGE_TOLERANCE`, the extent of its pixels (as pycocotools computes boxes, and COCO's crowd
    boxes are, to 1 px) or of its polygons (COCO's boxes of polygons, wider than their pixels
    where a part is thinner than a pixel)."""
    segmentation, bbox = ann.get("segmentation"), ann.get("bbox")
    if not segmentation or bbox is None:
        return None  # a box-only annotation: the box is its geometry
    extents = {"pixels": pixel_extent}
    if isinstance(segmentation, list):
        xs = [v for polygon in segmentation for v in polygon[0::2]]
        ys = [v for polygon in segmentation for v in polygon[1::2]]
        extents["polygons"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    x, y, w, h = bbox
    if any(
        max(abs(x - ex), abs(y - ey), abs(x + w - ex - ew), abs(y + h - ey - eh)) <= EDGE_TOLERANCE
        for ex, ey, ew, eh in extents.values()
    ):
        return None
    shown = " or ".join(f"its {k}' {[round(v, 2) for v in e]}" for k, e in extents.items())
    return (
        f"bbox {bbox} disagrees with its segmentation's extent ({shown}) by more than "
        f"{EDGE_TOLERANCE:g} px: correct it, or remove bbox and area to have prepare compute "
        "them from the segmentation"
    )


def _area_problem(ann: dict, pixels: int, extent: list[float]) -> str | None:
    """Whether a given area is far from the pixels its geometry covers.

    COCO's areas are not pixel counts (a polygon's is its exact area, a crowd region's up to
    1.8× its pixels), so an area passes within a factor of 2 of the pixel count, widened by the
    box's half-perimeter (the pixels along the outline); a wrong one would move the object
    between COCOeval's small, medium and large ranges.
    """
    area = ann.get("area")
    if area is None:
        return None
    if _numbers([area]) is None or area < 0:
        return f"area must be a non-negative number, got {area!r}"
    slack = extent[2] + extent[3]
    if pixels / 2 - slack <= area <= 2 * pixels + slack:
        return None
    return (
        f"area {area:g} disagrees with the {pixels} pixels its geometry covers (more than a "
        "factor of 2 apart): correct it, or remove it to have prepare compute it"
    )


def _check_annotations(
    raw: RawDataset, images: dict[int, dict], dropped_images: set[int], problems: ProblemLog
) -> tuple[list[dict], set[int]]:
    """The valid annotations, and the ids of images that lost one (they must go too)."""
    categories = {c["id"] for c in raw.coco["categories"] if isinstance(c, dict) and "id" in c}
    kept, spoilt = [], set()
    for j, ann in enumerate(raw.coco["annotations"]):
        if not (
            isinstance(ann, dict)
            and isinstance(ann.get("image_id"), int)
            and isinstance(ann.get("category_id"), int)
        ):
            problems.report(
                *raw.annotation_origin(j), "annotation needs an integer image_id and category_id"
            )
            continue
        image_id = ann["image_id"]
        if image_id in dropped_images:
            continue  # its image was skipped already; that skip is logged
        image = images.get(image_id)
        if image is None:
            problems.report(*raw.annotation_origin(j), f"image_id {image_id} is not in images")
            continue
        problem = _annotation_problem(ann, image, categories, raw)
        if problem:
            problems.report(
                *raw.annotation_origin(j),
                problem,
                also_skipped=(
                    f"its image id={image_id} ({image['file_name']}) is left out too, so that "
                    "no mask misses an object"
                ),
            )
            spoilt.add(image_id)
            continue
        kept.append(ann)
    return [a for a in kept if a["image_id"] not in spoilt], spoilt


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


def normalise(
    raw: RawDataset,
    image_root: Path,
    problems: ProblemLog,
    *,
    decode_images: bool = True,
    workers: int = 4,
) -> dict:
    """Validate a reader's COCO dict against its image folder; the normalised dataset.

    Each bad entry goes to `problems`: an `InputError` naming the file and the entry, or a logged
    skip. A skipped image takes its annotations with it.
    """
    coco = raw.coco
    check_categories(raw)
    listed = _check_image_entries(raw, problems)
    valid = _check_image_files(raw, listed, Path(image_root), problems, decode_images, workers)
    by_id = {coco["images"][i]["id"]: coco["images"][i] for i in valid}
    dropped = {  # ids of the images left out (reported): their annotations go with them
        image["id"]
        for image in coco["images"]
        if isinstance(image, dict) and isinstance(image.get("id"), int)
    } - set(by_id)
    annotations, spoilt = _check_annotations(raw, by_id, dropped, problems)
    images = [image for image_id, image in by_id.items() if image_id not in spoilt]
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
        "categories": coco["categories"],
        "icmflow": {
            "image_root": str(image_root),
            "source": str(raw.source),
            "format": raw.format,
        },
    }


def prepare_coco(
    annotations_path: Path,
    image_root: Path,
    problems: ProblemLog,
    *,
    decode_images: bool = True,
    workers: int = 4,
) -> dict:
    """Read, validate and normalise a COCO instances JSON and its image folder."""
    return normalise(
        read_coco_json(Path(annotations_path)),
        image_root,
        problems,
        decode_images=decode_images,
        workers=workers,
    )


def annotations_by_image(dataset: dict) -> dict[int, list[dict]]:
    """Map every image id (also those without objects) to its annotations."""
    grouped: dict[int, list[dict]] = {image["id"]: [] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        grouped[ann["image_id"]].append(ann)
    return grouped
