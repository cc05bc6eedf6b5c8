"""Where every stage reads and writes, relative to the project root (dvc.yaml uses the same)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def sample(self) -> Path:
        return self.root / "data" / "sample"

    def prepared(self, dataset: str) -> Path:
        return self.root / "data" / "prepared" / dataset

    def prepared_split(self, dataset: str, split: str) -> Path:
        return self.prepared(dataset) / f"{split}.json"

    def masks(self, kind: str, dataset: str) -> Path:
        """The mask stores of one kind (`object`, ...) for every split of `dataset`."""
        return self.root / "data" / "masks" / dataset / kind

    def mask_store(self, kind: str, dataset: str, split: str) -> Path:
        return self.masks(kind, dataset) / f"{split}.zarr"

    def model(self, codec: str) -> Path:
        return self.root / "models" / codec

    def checkpoint(self, codec: str) -> Path:
        return self.model(codec) / "checkpoint.pth.tar"

    def train_log(self, codec: str) -> Path:
        return self.model(codec) / "train_log.csv"

    def resized(self, dataset: str) -> Path:
        """`resize@<dataset>`: the resized images, their prepared JSON per split and the object
        masks of the resized images (`object/<split>.zarr`)."""
        return self.root / "data" / "resized" / dataset

    def coded(self, codec: str, on: str | None = None) -> Path:
        """Codec `codec`'s coded dataset: of `encode.dataset` (`on` None), or of the dataset
        `on` of `encode.datasets`."""
        return self.root / "data" / _qualified("coded", on) / codec

    def metrics(self, codec: str, on: str | None = None) -> Path:
        return self.root / "results" / _qualified("metrics", on) / codec

    def task_model(self, task: str) -> Path:
        """A task model trained in the pipeline (`task@`): `weights.pt` and its provenance."""
        return self.root / "models" / "tasks" / task

    def task_weights(self, task: str) -> Path:
        return self.task_model(task) / "weights.pt"

    def predictions(self, source: str, task: str) -> Path:
        """`infer@<source>-<task>`: predictions and accuracy of a task on `source`'s images."""
        return self.root / "results" / "tasks" / f"{source}-{task}"

    def finetuned_model(self, codec: str, task: str) -> Path:
        return self.root / "models" / "finetuned" / f"{codec}-{task}"

    def finetuned_weights(self, codec: str, task: str) -> Path:
        return self.finetuned_model(codec, task) / "weights.pt"

    def finetuned(self, codec: str, task: str) -> Path:
        """`finetune@<codec>-<task>`: accuracy of the fine-tuned model on the codec's images."""
        return self.root / "results" / "finetuned" / f"{codec}-{task}"

    def bit_maps(self, pair: str) -> Path:
        """`bitmaps@<first>-vs-<second>`: bit-allocation heat maps of two codecs."""
        return self.root / "results" / "bitmaps" / pair

    @property
    def report(self) -> Path:
        return self.root / "results" / "report"

    def rd_report(self, on: str | None = None) -> Path:
        """The RD table, BD-rates and plots of one coded dataset: the report's own folder for
        `encode.dataset`, a folder in it for each dataset of `encode.datasets`."""
        return self.report if on is None else self.report / on

    def work(self, stage: str, name: str) -> Path:
        """Resumable work in progress: outside every DVC output, so `dvc repro` keeps it."""
        return self.root / "data" / ".work" / stage / name

    def lock(self, stage: str, name: str) -> Path:
        """The lock a run of `stage` on `name` holds (`icmflow.core.locks`): beside its work
        folder, which a run empties and deletes."""
        return self.work(stage, name).with_name(f"{name}.lock")


def _qualified(folder: str, on: str | None) -> str:
    return folder if on is None else f"{folder}-{on}"


def shared_store(storage_root: str, stage: str, name: str) -> str:
    """Where stage `stage` builds store `name` under `storage.root` (a URL), for every worker."""
    return f"{storage_root}/{stage}/{name}"


def shared_work(storage_root: str, stage: str, name: str) -> str:
    """The work directory of `shared_store(storage_root, stage, name)`."""
    return f"{storage_root}/.work/{stage}/{name}"
