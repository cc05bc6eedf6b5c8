"""COCO: an instances JSON (`annotations`) and its image folder (`images`), read as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from icmflow.core.errors import ProblemLog
from icmflow.datasets.coco import RawDataset, read_coco_json
from icmflow.datasets.formats.base import FORMATS, DatasetFormat, FormatOptions


class CocoOptions(FormatOptions):
    format: Literal["coco"] = "coco"


def read_coco(annotations: Path, images: Path, problems: ProblemLog) -> RawDataset:
    """One split; `normalise` checks it against `images`."""
    return read_coco_json(annotations)


FORMATS.register("coco")(DatasetFormat(CocoOptions, read_coco))
