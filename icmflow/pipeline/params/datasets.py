"""Dataset entries: `root`, `splits`, and the options of the registered format they name."""

from __future__ import annotations

from functools import reduce
from operator import or_
from pathlib import Path
from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag

from icmflow.datasets.formats import FORMATS
from icmflow.datasets.formats.base import FormatOptions
from icmflow.pipeline.params.sections import Name, Section


class SplitParams(Section):
    annotations: str = Field(
        description="relative to the dataset root: the COCO instances JSON (coco), or the "
        "folder of annotations/ (visdrone), labels/<split> (yolo), gtFine/<split> (cityscapes)"
    )
    images: str = Field(description="image folder, relative to the dataset root")


class DatasetBase(Section):
    root: str = Field(description="folder holding the dataset; DVC tracks it as a dependency")
    splits: dict[Name, SplitParams] = Field(
        min_length=1, description="split name -> its files; names become file names"
    )

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """(annotations file or folder, image folder) of `split`."""
        root = Path(self.root)
        entry = self.splits[split]
        return root / entry.annotations, root / entry.images

    def reader_kwargs(self) -> dict[str, Any]:
        """The format's own reader arguments (entries also derive from their `FormatOptions`)."""
        assert isinstance(self, FormatOptions)
        return self.reader_options(Path(self.root))


def _entry_model(format: str) -> type[DatasetBase]:
    options = FORMATS[format].options
    return type(f"{options.__name__.removesuffix('Options')}Dataset", (DatasetBase, options), {})


ENTRY_MODELS = {format: _entry_model(format) for format in FORMATS}


def _format_of(dataset: Any) -> str | None:
    if isinstance(dataset, dict):
        return dataset.get("format", "coco")
    return getattr(dataset, "format", None)


DatasetParams = Annotated[
    reduce(or_, (Annotated[model, Tag(name)] for name, model in ENTRY_MODELS.items())),
    Discriminator(
        _format_of,
        custom_error_type="dataset_format",
        custom_error_message=f"format must be one of {', '.join(FORMATS)}",
    ),
]
"""A dataset entry; `format` (default coco) selects the reader and the options it takes."""
