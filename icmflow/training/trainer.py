"""The training engine: a codec, an objective, CompressAI's two optimisers, a log, resumable state.

As in CompressAI's example: the main Adam optimiser takes every parameter except the entropy
bottlenecks' `quantiles` (and the objective's own trainable parameters, if it has any), the
auxiliary optimiser fits the quantiles by minimising `model.aux_loss()`; gradients are clipped to
`clip_max_norm`. With `channels_last`, model and image batches use the NHWC memory layout, which
CPUs and GPUs convolve faster (measured in README). Each step logs every term the objective
returns, then `aux_loss` and `lr`, to a CSV file. The caller updates the model
(`update(force=True)`) before saving it, so its checkpoint carries the entropy coder's tables.

Batches are dicts of tensors (see `icmflow.training.objectives.base`); a dataset with a
`collate` method batches its own samples (e.g. boxes of different counts).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from compressai.models import CompressionModel
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from icmflow.training.objectives import Batch, Objective

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    aux_lr: float
    clip_max_norm: float = 1.0
    lr_milestones: tuple[int, ...] = ()
    seed: int = 0
    num_workers: int = 0
    device: str = "cpu"
    channels_last: bool = False
    save_every: int = 500


@dataclass
class TrainResult:
    model: CompressionModel
    optimizer: torch.optim.Optimizer
    aux_optimizer: torch.optim.Optimizer
    last: dict[str, float] = field(default_factory=dict)


def read_log(path: Path) -> list[dict[str, float]]:
    """The per-step log written by `train_codec`."""
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def configure_optimizers(
    model: CompressionModel, lr: float, aux_lr: float, objective: nn.Module | None = None
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Main and auxiliary Adam optimisers, split on `.quantiles` as CompressAI does."""
    named = dict(model.named_parameters())
    aux = [p for n, p in named.items() if n.endswith(".quantiles") and p.requires_grad]
    main = [p for n, p in named.items() if not n.endswith(".quantiles") and p.requires_grad]
    if objective is not None:
        main += [p for p in objective.parameters() if p.requires_grad]
    return torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


def _batches(loader: DataLoader) -> Iterator[Batch]:
    while True:
        yield from loader


class _State:
    """Resumable training state in one file, saved every few steps through a rename."""

    def __init__(self, path: Path | None):
        self.path = path

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, **state: Any) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


class _Log:
    """The CSV log: `step`, the objective's terms in the order it returns them, `aux_loss`, `lr`."""

    def __init__(self, path: Path, rows: list[dict[str, float]]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = rows
        self._handle = path.open("w", newline="")
        self._writer: csv.DictWriter | None = None
        for row in rows:
            self._write(row)

    def _write(self, row: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = csv.DictWriter(self._handle, list(row))
            self._writer.writeheader()
        self._writer.writerow(row)

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        self._write(row)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _to(tensor: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    tensor = tensor.to(device, non_blocking=True)
    return tensor.contiguous(memory_format=layout) if tensor.dim() == 4 else tensor


def _loader(data: Dataset, settings: TrainSettings, seed: int) -> DataLoader:
    return DataLoader(
        data,
        batch_size=settings.batch_size,
        shuffle=True,
        drop_last=len(data) >= settings.batch_size,
        num_workers=settings.num_workers,
        collate_fn=getattr(data, "collate", None),
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=settings.num_workers > 0,
    )


def train_codec(
    model: CompressionModel,
    objective: Objective,
    data: Dataset,
    settings: TrainSettings,
    *,
    log_path: Path,
    state_path: Path | None = None,
) -> TrainResult:
    """Train for `settings.steps` steps; returns the model, both optimisers, the last terms.

    With `state_path`, the state is saved every `settings.save_every` steps and a rerun resumes
    from it (from the saved step, with a fresh data order).
    """
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    model.to(device, memory_format=layout).train()
    objective.to(device).train()
    optimizer, aux_optimizer = configure_optimizers(model, settings.lr, settings.aux_lr, objective)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, list(settings.lr_milestones), gamma=0.1
    )
    state, rows, start = _State(state_path), [], 0
    saved = state.load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        objective.load_state_dict(saved["objective"])
        optimizer.load_state_dict(saved["optimizer"])
        aux_optimizer.load_state_dict(saved["aux_optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rows, start = saved["rows"], saved["step"]
        torch.manual_seed(settings.seed + start)
        log.info("resuming training at step %d from %s", start, state_path)
    batches = _batches(_loader(data, settings, settings.seed + start))
    result = TrainResult(model, optimizer, aux_optimizer)
    train_log = _Log(log_path, rows)
    try:
        with tqdm(total=settings.steps, initial=start, desc="train", unit="step") as bar:
            for step in range(start + 1, settings.steps + 1):
                batch = {k: _to(v, device, layout) for k, v in next(batches).items()}
                optimizer.zero_grad()
                aux_optimizer.zero_grad()
                terms = objective(model(batch["x"]), batch)
                terms["loss"].backward()
                if settings.clip_max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_max_norm)
                optimizer.step()
                aux_loss = model.aux_loss()
                aux_loss.backward()
                aux_optimizer.step()
                scheduler.step()
                result.last = {k: float(v.detach()) for k, v in terms.items()}
                train_log.add(
                    {
                        "step": step,
                        **result.last,
                        "aux_loss": float(aux_loss.detach()),
                        "lr": optimizer.param_groups[0]["lr"],
                    }
                )
                bar.update()
                bar.set_postfix(loss=f"{result.last['loss']:.4g}")
                if step % settings.save_every == 0 and step < settings.steps:
                    train_log.flush()
                    state.save(
                        model=model.state_dict(),
                        objective=objective.state_dict(),
                        optimizer=optimizer.state_dict(),
                        aux_optimizer=aux_optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        rows=train_log.rows,
                        step=step,
                    )
    finally:
        train_log.close()
    return result
