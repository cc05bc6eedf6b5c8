"""What a coded dataset (`Params.coded_sets`) is made from: the splits its codecs code, and the
originals and object masks they are coded from and measured against (the prepared dataset's,
or with `resize` those of `resize@<dataset>`)."""

from __future__ import annotations

from pathlib import Path

from icmflow.core.errors import MissingInputError
from icmflow.datasets.prepared import PreparedDataset
from icmflow.pipeline.params import Params
from icmflow.pipeline.params.project import CodedSet
from icmflow.pipeline.paths import Paths


def coded_splits(params: Params, coded: CodedSet, codec: str | None = None) -> list[str]:
    """The splits `codec` codes of `coded` (None: those any of its codecs codes): its split,
    and of the primary dataset `encode.train_split` for the codecs a task is fine-tuned on."""
    names = [coded.split]
    train = params.encode.train_split
    finetuned = params.finetuned_codecs if codec is None else [codec]
    if coded.primary and train and set(finetuned) & set(params.finetuned_codecs):
        names.append(train)
    return names


def originals_dir(paths: Paths, coded: CodedSet) -> Path:
    """The folder of the originals' JSONs (and, resized, of their images and masks)."""
    return paths.prepared(coded.dataset) if coded.resize is None else paths.resized(coded.dataset)


def originals(paths: Paths, coded: CodedSet, split: str) -> Path:
    """The prepared JSON of `split` as its codecs code it: the prepared dataset's, or resized."""
    return originals_dir(paths, coded) / f"{split}.json"


def load_originals(paths: Paths, coded: CodedSet, split: str) -> PreparedDataset:
    """The originals of `split` (`originals`); resized ones not made yet name `resize`."""
    path = originals(paths, coded, split)
    if coded.resize is not None and not path.is_file():
        raise MissingInputError(f"{path}: not found; run `icmflow resize {coded.dataset}` first")
    return PreparedDataset.load(path)


def object_masks_dir(paths: Paths, coded: CodedSet) -> Path:
    """The folder of the object masks of the originals (a DVC dependency)."""
    if coded.resize is None:
        return paths.masks("object", coded.dataset)
    return paths.resized(coded.dataset)


def object_masks(paths: Paths, coded: CodedSet, split: str) -> Path:
    """The object mask store of `split`'s originals (resized: made of the resized images)."""
    if coded.resize is None:
        return paths.mask_store("object", coded.dataset, split)
    return paths.resized(coded.dataset) / "object" / f"{split}.zarr"


def has_objects(params: Params, coded: CodedSet) -> bool:
    """Whether the dataset has annotations, so object masks and object PSNR."""
    return params.dataset(coded.dataset).has_annotations


def arguments(name: str, coded: CodedSet) -> list[str]:
    """The arguments of `icmflow encode` / `evaluate` for codec `name` on `coded`."""
    return [name] if coded.primary else [name, "--dataset", coded.dataset]


def stage_name(stage: str, name: str, coded: CodedSet) -> str:
    """The DVC stage of `stage` (encode, evaluate) for codec `name` on `coded`."""
    return f"{stage}@{name}" if coded.primary else f"{stage}-{coded.dataset}@{name}"
