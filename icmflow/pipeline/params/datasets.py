"""Dataset entries: `root`, `splits`, and the options of the registered format they name."""

from __future__ import annotations

from functools import reduce
from operator import or_
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from icmflow.datasets.formats import FORMATS
from icmflow.datasets.formats.base import FormatOptions
from icmflow.pipeline.params.sections import Name, Section


class SplitParams(Section):
    annotations: str | list[str] | None = Field(
        None,
        description="relative to the dataset root: the COCO instances JSON (coco; or a list of "
        "them, merged), or the folder of annotations/ (visdrone), labels/<split> (yolo), "
        "gtFine/<split> (cityscapes); none for format images",
    )
    images: str = Field(description="image folder, relative to the dataset root")


class DatasetBase(Section):
    root: str = Field(description="folder holding the dataset; DVC tracks it as a dependency")
    splits: dict[Name, SplitParams] = Field(
        min_length=1, description="split name -> its files; names become file names"
    )
    on_error: Literal["raise", "skip"] | None = Field(
        None, description="this dataset's bad entries: raise or skip; null: prepare.on_error"
    )

    @model_validator(mode="after")
    def _annotations_as_the_format_has_them(self) -> DatasetBase:
        assert isinstance(self, FormatOptions)
        format = getattr(self, "format", "coco")
        for split, entry in self.splits.items():
            if self.annotated and entry.annotations is None:
                raise ValueError(
                    f"splits.{split}.annotations is required by format {format} (a folder of "
                    "images without annotations is format images)"
                )
            if not self.annotated and entry.annotations is not None:
                raise ValueError(
                    f"splits.{split}.annotations: format {format} reads images only; remove it "
                    "(or use a format with annotations: coco, yolo, ...)"
                )
            if isinstance(entry.annotations, list) and not self.several_annotation_files:
                raise ValueError(
                    f"splits.{split}.annotations: format {format} reads one annotation folder "
                    "per split; a list of files is for COCO JSON files (format coco)"
                )
            if isinstance(entry.annotations, list) and not entry.annotations:
                raise ValueError(f"splits.{split}.annotations: an empty list; name a file")
        return self

    @property
    def has_annotations(self) -> bool:
        """Whether its format has annotations (object masks, object metrics and tasks need
        them)."""
        assert isinstance(self, FormatOptions)
        return self.annotated

    def split_paths(self, split: str) -> tuple[Path | list[Path] | None, Path]:
        """(annotations file or folder, a list of files where several are merged, or None
        without annotations; image folder) of `split`."""
        root = Path(self.root)
        entry = self.splits[split]
        annotations: Path | list[Path] | None = None
        if isinstance(entry.annotations, list):
            annotations = [root / name for name in entry.annotations]
        elif entry.annotations is not None:
            annotations = root / entry.annotations
        return annotations, root / entry.images

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
