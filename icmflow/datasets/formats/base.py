"""What a dataset format registers: the options it takes in params.yaml and its reader.

A reader turns one split of its layout into a `RawDataset` (a COCO dict plus where each entry came
from), which `coco.normalise` validates into the one schema every later stage reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from icmflow.core.errors import ProblemLog
from icmflow.core.registry import Registry
from icmflow.datasets.coco import RawDataset


class Reader(Protocol):
    def __call__(
        self,
        annotations: Path | list[Path] | None,
        images: Path,
        problems: ProblemLog,
        **options: Any,
    ) -> RawDataset: ...


class FormatOptions(BaseModel):
    """A format's own settings in a dataset entry (besides `root` and `splits`)."""

    model_config = ConfigDict(extra="forbid")

    annotated: ClassVar[bool] = True
    """Whether the format has annotations (each split's `annotations`); without them a dataset
    serves codec training without object masks, encoding and RD evaluation only."""
    several_annotation_files: ClassVar[bool] = False
    """Whether a split's `annotations` may list several files, which the reader merges."""

    def reader_options(self, root: Path) -> dict[str, Any]:
        """The reader's keyword arguments; `root` is the dataset's folder."""
        return {}


@dataclass(frozen=True)
class DatasetFormat:
    options: type[FormatOptions]
    read: Reader


class IgnoredRegionsOptions(FormatOptions):
    """Formats with regions that are neither objects nor background (VisDrone, Cityscapes)."""

    ignored_regions: Literal["crowd", "drop"] = Field(
        "crowd",
        description="regions neither object nor background (README, Datasets): kept as crowd "
        "annotations (masks.crowd decides their pixels) or dropped",
    )

    def reader_options(self, root: Path) -> dict[str, Any]:
        return {"ignored_regions": self.ignored_regions}


FORMATS: Registry[DatasetFormat] = Registry("dataset format")
