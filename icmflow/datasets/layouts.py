"""What the folder-layout readers (VisDrone, YOLO, Cityscapes) share.

They find images in a folder, pair each with its label file, read image headers for sizes, and
collect a `RawDataset` whose every entry names the file (and line) it came from. Image ids are
1, 2, ... in the order of the sorted image paths, so they are stable across runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import Origin, RawDataset
from icmflow.datasets.images import Header, read_header, undecodable

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

IgnoredRegions = Literal["crowd", "drop"]
"""What a reader does with regions that are neither clean objects nor background."""


def ignored_region_counts(policy: IgnoredRegions, count: int) -> dict[str, int]:
    """The prepare report's tally of ignored regions, named after what happened to them."""
    return {"ignored_regions_as_crowd" if policy == "crowd" else "ignored_regions_dropped": count}


def require_folder(path: Path, what: str) -> None:
    if not path.is_dir():
        raise InputError(
            path, "", f"{what} folder not found; check the root and splits of its datasets entry"
        )


def list_files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """Files under `folder` (recursively) with one of `suffixes`, relative to it, sorted."""
    return sorted(
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes
    )


def pair_with_labels(
    images: Path, labels: Path, problems: ProblemLog, *, label_required: bool
) -> list[tuple[Path, Path | None]]:
    """(image path relative to `images`, its label file or None), sorted by image path.

    The label of `images/a/b.jpg` is `labels/a/b.txt`. Images sharing one label file (b.jpg and
    b.png) and label files without an image are reported; so is an image without a label when
    `label_required`.
    """
    require_folder(images, "image")
    require_folder(labels, "annotation")
    by_stem: dict[Path, list[Path]] = {}
    for image in list_files(images, IMAGE_SUFFIXES):
        by_stem.setdefault(image.with_suffix(""), []).append(image)
    pairs = []
    for stem, group in sorted(by_stem.items()):
        label = labels / stem.with_suffix(".txt")
        if len(group) > 1:
            for image in group:
                problems.report(
                    str(images / image),
                    "",
                    f"{len(group)} images ({', '.join(map(str, group))}) share the label file "
                    f"{label}: which one it describes is ambiguous; rename or remove the others",
                    also_skipped="left out with its label file",
                )
            continue
        if label.is_file():
            pairs.append((group[0], label))
        elif label_required:
            problems.report(
                str(images / group[0]),
                "",
                f"its annotation file {label} is missing; restore it (an empty file means the "
                "image has no objects)",
            )
        else:
            pairs.append((group[0], None))
    for label in list_files(labels, frozenset({".txt"})):
        if label.with_suffix("") not in by_stem:
            problems.report(
                str(labels / label),
                "",
                f"no image for this annotation file in {images} (looked for "
                f"{label.with_suffix('.*')}): restore the image or remove the annotation file",
            )
    return sorted(pairs)


def read_rows(
    path: Path, problems: ProblemLog, parse: Callable[[str], dict | str | None]
) -> list[tuple[dict, Origin]] | None:
    """Every non-empty line of a text annotation file through `parse`, with its origin.

    `parse` returns the line's annotation, the problem with it, or None to leave it out. None
    (every problem reported) if the file is not text or has a bad row: its image must go, as a
    mask without that row's object would be wrong.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        problems.report(
            str(path),
            f"byte {err.start}",
            "not UTF-8 text: the file is corrupt or not an annotation file; replace it",
            also_skipped="its image is left out",
        )
        return None
    rows, bad = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = parse(line)
        if isinstance(row, str):
            problems.report(str(path), f"line {number}", row, also_skipped="its image is left out")
            bad = True
        elif row is not None:
            rows.append((row, (str(path), f"line {number}")))
    return None if bad else rows


def read_headers(
    root: Path, images: list[Path], problems: ProblemLog, *, refuse_orientation: bool
) -> dict[Path, Header]:
    """Headers of the readable images (relative to `root`); unreadable ones are reported.

    With `refuse_orientation`, images with an EXIF orientation tag are reported too: the
    annotation format records no image size, so nothing shows which orientation it refers to.
    """
    headers = {}
    for image in tqdm(images, desc="read headers", unit="img"):
        path = root / image
        try:
            header = read_header(path)
        except Exception as err:  # PIL raises many types for corrupt files
            problems.report(str(path), "", undecodable(path, err))
            continue
        if refuse_orientation and header.orientation != 1:
            problems.report(
                str(path),
                "",
                f"{header.orientation_note()}; this annotation format records no image size, "
                "so nothing tells whether the labels refer to the stored or the rotated view: "
                "if the rotated, rotate the pixels (e.g. PIL.ImageOps.exif_transpose) and save "
                "them without the tag; if the stored, remove the tag",
            )
            continue
        headers[image] = header
    return headers


class RawBuilder:
    """Collects images and annotations, each with its origin, into a `RawDataset`."""

    def __init__(self) -> None:
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.image_origins: list[Origin] = []
        self.annotation_origins: list[Origin] = []

    def add(
        self,
        file_name: Path,
        header: Header,
        origin: Origin,
        annotations: list[tuple[dict, Origin]],
    ) -> None:
        """One image, the next id, and its annotations with their origins."""
        image_id = len(self.images) + 1
        self.images.append(
            {
                "id": image_id,
                "file_name": file_name.as_posix(),
                "width": header.width,
                "height": header.height,
            }
        )
        self.image_origins.append(origin)
        for annotation, annotation_origin in annotations:
            self.annotations.append(
                {"id": len(self.annotations) + 1, "image_id": image_id, **annotation}
            )
            self.annotation_origins.append(annotation_origin)

    def build(
        self,
        source: Path,
        format: str,
        categories: list[dict],
        categories_from: str,
        counts: dict[str, int],
    ) -> RawDataset:
        return RawDataset(
            {"images": self.images, "annotations": self.annotations, "categories": categories},
            source,
            format,
            self.image_origins,
            self.annotation_origins,
            categories_from,
            counts,
        )
