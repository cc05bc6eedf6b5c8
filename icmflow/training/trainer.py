"""The training loop: CompressAI's two optimisers, a per-step log, and resumable state.

As in CompressAI's example: the main Adam optimiser takes every parameter except the entropy
bottlenecks' `quantiles`, which the auxiliary optimiser fits by minimising `model.aux_loss()`;
gradients are clipped to `clip_max_norm`. The model is updated (`update(force=True)`) by the
caller before it is saved, so its checkpoint carries the entropy coder's tables.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from compressai.models import CompressionModel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from icmflow.training.losses import RateDistortionLoss

log = logging.getLogger(__name__)

LOG_FIELDS = ("step", "loss", "bpp", "mse", "aux_loss", "lr")


def read_log(path: Path) -> list[dict[str, float]]:
    """The per-step log written by `train_codec`."""
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def configure_optimizers(
    model: CompressionModel, lr: float, aux_lr: float
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Main and auxiliary Adam optimisers, split on `.quantiles` as CompressAI does."""
    named = dict(model.named_parameters())
    aux = [p for n, p in named.items() if n.endswith(".quantiles") and p.requires_grad]
    main = [p for n, p in named.items() if not n.endswith(".quantiles") and p.requires_grad]
    return torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


def _batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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


def train_codec(
    model: CompressionModel,
    data: Dataset,
    criterion: RateDistortionLoss,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    aux_lr: float,
    clip_max_norm: float,
    lr_milestones: list[int],
    seed: int,
    num_workers: int,
    device: torch.device,
    log_path: Path,
    state_path: Path | None = None,
    save_every: int = 500,
) -> tuple[CompressionModel, torch.optim.Optimizer, torch.optim.Optimizer, dict[str, float]]:
    """Train for `steps` steps; returns the model, both optimisers and the last step's losses.

    With `state_path`, the state is saved every `save_every` steps and a rerun resumes from it
    (from the saved step, with a fresh data order).
    """
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer, aux_optimizer = configure_optimizers(model, lr, aux_lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, lr_milestones, gamma=0.1)
    state, rows, start = _State(state_path), [], 0
    saved = state.load()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        aux_optimizer.load_state_dict(saved["aux_optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rows, start = saved["rows"], saved["step"]
        torch.manual_seed(seed + start)
        log.info("resuming training at step %d from %s", start, state_path)
    loader = DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(data) >= batch_size,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed + start),
        persistent_workers=num_workers > 0,
    )
    batches = _batches(loader)
    last: dict[str, float] = {}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("w", newline="") as handle,
        tqdm(total=steps, initial=start, desc="train", unit="step") as bar,
    ):
        writer = csv.DictWriter(handle, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        for step in range(start + 1, steps + 1):
            x, m = (t.to(device) for t in next(batches))
            optimizer.zero_grad()
            aux_optimizer.zero_grad()
            losses = criterion(model(x), x, m)
            losses["loss"].backward()
            if clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
            optimizer.step()
            aux_loss = model.aux_loss()
            aux_loss.backward()
            aux_optimizer.step()
            scheduler.step()
            last = {k: float(v.detach()) for k, v in losses.items()}
            row = {"step": step, **last, "aux_loss": float(aux_loss.detach())}
            row["lr"] = optimizer.param_groups[0]["lr"]
            rows.append(row)
            writer.writerow(row)
            bar.update()
            bar.set_postfix(loss=f"{last['loss']:.4g}", bpp=f"{last['bpp']:.3f}")
            if step % save_every == 0 and step < steps:
                handle.flush()
                state.save(
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    aux_optimizer=aux_optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    rows=rows,
                    step=step,
                )
    return model, optimizer, aux_optimizer, last
