"""Dataset formats by name (`datasets.<name>.format` in params.yaml), one module each.

A new format is one module here that registers a `DatasetFormat` (its options and reader) and one
import below.
"""

from icmflow.datasets.formats import cityscapes, coco, images, visdrone, yolo
from icmflow.datasets.formats.base import FORMATS, DatasetFormat, FormatOptions

__all__ = [
    "FORMATS",
    "DatasetFormat",
    "FormatOptions",
    "cityscapes",
    "coco",
    "images",
    "visdrone",
    "yolo",
]
