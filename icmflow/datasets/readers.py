"""One reader per dataset layout, all producing a `RawDataset` that `coco.normalise` validates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from icmflow.datasets.cityscapes import read_cityscapes
from icmflow.datasets.coco import RawDataset, read_coco_json
from icmflow.datasets.visdrone import read_visdrone
from icmflow.datasets.yolo import read_yolo
from icmflow.errors import ProblemLog


def read_split(
    format: str, annotations: Path, images: Path, problems: ProblemLog, **options: Any
) -> RawDataset:
    """Read one split in `format`; `options` are the format's own (e.g. `ignored_regions`)."""
    if format == "coco":
        return read_coco_json(annotations)
    reader = {"visdrone": read_visdrone, "cityscapes": read_cityscapes, "yolo": read_yolo}[format]
    return reader(annotations, images, problems, **options)
