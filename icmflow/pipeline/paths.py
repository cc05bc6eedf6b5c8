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

    def coded(self, codec: str) -> Path:
        return self.root / "data" / "coded" / codec

    def metrics(self, codec: str) -> Path:
        return self.root / "results" / "metrics" / codec

    @property
    def report(self) -> Path:
        return self.root / "results" / "report"

    def work(self, stage: str, name: str) -> Path:
        """Resumable work in progress: outside every DVC output, so `dvc repro` keeps it."""
        return self.root / "data" / ".work" / stage / name
