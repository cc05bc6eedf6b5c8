"""The whole of params.yaml: its sections, and the checks across them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, PrivateAttr

from icmflow.core.errors import IcmflowError
from icmflow.pipeline.params.codecs import (
    CodecEntry,
    CompressedDomainEntry,
    LearnedEntry,
    ScalableEntry,
    SecondaryEntry,
    is_compressed_domain,
    is_learned,
    is_scalable,
    is_secondary,
    is_trained,
)
from icmflow.pipeline.params.datasets import DatasetParams
from icmflow.pipeline.params.sections import (
    BitMapsParams,
    EdgesParams,
    EncodeParams,
    MasksParams,
    Name,
    PrepareParams,
    ReportParams,
    ResizeParams,
    SamParams,
    SampleParams,
    Section,
    StorageParams,
    TrainParams,
)
from icmflow.pipeline.params.tasks import TaskEntry


class ParamsError(IcmflowError):
    """params.yaml is missing, unreadable or invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class CodedSet:
    """A dataset split the codecs code and evaluate measures: `encode.dataset` (the primary one,
    which tasks, fine-tuning and bit maps read) or an entry of `encode.datasets`."""

    dataset: str
    split: str
    codecs: tuple[str, ...]
    resize: ResizeParams | None
    primary: bool

    @property
    def on(self) -> str | None:
        """What names its stages and folders apart from the primary's: None for the primary
        (`data/coded/<codec>`), else the dataset (`data/coded-<dataset>/<codec>`)."""
        return None if self.primary else self.dataset

    @property
    def key(self) -> str:
        """Its params key: `encode` for the primary, `encode.datasets.<dataset>` else."""
        return "encode" if self.primary else f"encode.datasets.{self.dataset}"


class Params(Section):
    sample: SampleParams = SampleParams()
    datasets: dict[Name, DatasetParams]
    prepare: PrepareParams = PrepareParams()
    masks: MasksParams = MasksParams()
    sam: SamParams = SamParams()
    edges: EdgesParams = EdgesParams()
    train: TrainParams = TrainParams()
    codecs: dict[Name, CodecEntry] = Field(min_length=1)
    encode: EncodeParams = EncodeParams()
    storage: StorageParams = StorageParams()
    tasks: dict[Name, TaskEntry] = Field(default_factory=dict)
    report: ReportParams
    bit_maps: BitMapsParams = BitMapsParams()
    _source: Path = PrivateAttr(Path("params.yaml"))

    @property
    def source(self) -> Path:
        """The params file these params were read from (`load_params`): what messages name."""
        return self._source

    def codec(self, name: str) -> CodecEntry:
        if name not in self.codecs:
            raise ParamsError(
                f"codec {name!r} is not in {self.source} codecs ({', '.join(self.codecs)})"
            )
        return self.codecs[name]

    def learned(self, name: str) -> LearnedEntry:
        entry = self.codec(name)
        if not is_learned(entry):
            raise ParamsError(f"codec {name!r} is a {entry.family} codec: it is not trained")
        return entry

    def compressed_domain(self, name: str) -> CompressedDomainEntry | SecondaryEntry:
        entry = self.codec(name)
        if not is_compressed_domain(entry):
            raise ParamsError(f"codec {name!r} is a {entry.family} codec, not compressed-domain")
        return entry

    def secondary(self, name: str) -> SecondaryEntry:
        entry = self.codec(name)
        if not is_secondary(entry):
            raise ParamsError(f"codec {name!r} is no secondary task's (it has no `primary`)")
        return entry

    @property
    def learned_codecs(self) -> list[str]:
        return [name for name, entry in self.codecs.items() if is_learned(entry)]

    @property
    def trained_codecs(self) -> list[str]:
        """Codecs with a train@ stage: learned, scalable and secondary tasks' ones."""
        return [name for name, entry in self.codecs.items() if is_trained(entry)]

    def scalable(self, name: str) -> ScalableEntry:
        entry = self.codec(name)
        if not is_scalable(entry):
            raise ParamsError(f"codec {name!r} is a {entry.family} codec, not a scalable one")
        return entry

    def training(self, name: str) -> TrainParams:
        """`train` with the overrides of codec `name` (learned, scalable or secondary)."""
        entry = self.codec(name)
        if not is_trained(entry):
            raise ParamsError(f"codec {name!r} is a {entry.family} codec: it is not trained")
        overrides = entry.train.model_dump(exclude_none=True)
        return self.train.model_copy(update=overrides)

    def task(self, name: str) -> TaskEntry:
        if name not in self.tasks:
            raise ParamsError(
                f"task {name!r} is not in {self.source} tasks ({', '.join(self.tasks)})"
            )
        return self.tasks[name]

    def finetuned(self) -> list[tuple[str, str]]:
        """(codec, task) pairs that get a finetune@ stage, in params order."""
        return [
            (codec, name)
            for name, task in self.tasks.items()
            if task.finetune
            for codec in task.finetune.codecs
        ]

    @property
    def finetuned_codecs(self) -> list[str]:
        """Codecs some task is fine-tuned on: their encode@ codes `encode.train_split` too."""
        return list(dict.fromkeys(codec for codec, _ in self.finetuned()))

    def bit_map_pairs(self) -> dict[str, tuple[str, str]]:
        """`bitmaps@` stage keys (`<first>-vs-<second>`) and their codecs."""
        return {f"{a}-vs-{b}": (a, b) for a, b in self.bit_maps.pairs}

    def dataset(self, name: str) -> DatasetParams:
        if name not in self.datasets:
            raise ParamsError(
                f"dataset {name!r} is not in {self.source} datasets ({', '.join(self.datasets)})"
            )
        return self.datasets[name]

    def coded_sets(self) -> list[CodedSet]:
        """The primary coded dataset, then those of `encode.datasets`, in params order."""
        options = self.encode
        sets = [CodedSet(options.dataset, options.split, tuple(self.codecs), options.resize, True)]
        for name, entry in options.datasets.items():
            splits = self.datasets[name].splits if name in self.datasets else {"": None}
            sets.append(
                CodedSet(
                    name,
                    entry.split or next(iter(splits)),
                    tuple(self.codecs if entry.codecs is None else entry.codecs),
                    entry.resize,
                    False,
                )
            )
        return sets

    def coded_set(self, dataset: str | None = None) -> CodedSet:
        """The coded dataset of `dataset` (None or `encode.dataset`: the primary one)."""
        found = {s.dataset: s for s in self.coded_sets()}
        key = self.encode.dataset if dataset is None else dataset
        if key not in found:
            raise ParamsError(
                f"dataset {key!r} is not coded: {self.source} encode.dataset is "
                f"{self.encode.dataset!r} and encode.datasets lists "
                f"{', '.join(self.encode.datasets) or 'none'}"
            )
        return found[key]

    def series(self) -> dict[str, list[str]]:
        """Each RD series and its codecs, in params order."""
        series: dict[str, list[str]] = {}
        for name, entry in self.codecs.items():
            series.setdefault(entry.series_name, []).append(name)
        return series
