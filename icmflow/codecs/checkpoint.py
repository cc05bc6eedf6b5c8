"""Checkpoints in CompressAI's layout, so they move between icmflow and CompressAI unchanged.

A checkpoint is `torch.save` of a dict with CompressAI's keys: `state_dict` (the model, saved after
`update(force=True)`, so it carries the entropy coder's CDF tables), `epoch`, `loss`, `optimizer`
and `aux_optimizer`, plus an `icmflow` entry (architecture name, its arguments, loss and λ).
CompressAI's `eval_model -a <arch> -p <checkpoint>` and `<ModelClass>.from_state_dict` read it;
`load_codec` also reads plain CompressAI checkpoints when given the architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from compressai.models import CompressionModel

from icmflow.codecs.architectures import architecture, create_model
from icmflow.core.errors import CheckpointError


def save_checkpoint(
    path: Path,
    model: CompressionModel,
    *,
    arch: str,
    model_args: dict[str, Any],
    step: int,
    loss: float,
    optimizer: torch.optim.Optimizer,
    aux_optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
) -> None:
    """Save the updated model: call `model.update(force=True)` before this."""
    record = {
        "epoch": step,
        "state_dict": model.state_dict(),
        "loss": loss,
        "optimizer": optimizer.state_dict(),
        "aux_optimizer": aux_optimizer.state_dict(),
        "icmflow": {"arch": arch, "model_args": model_args, "step": step, **extra},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(record, tmp)
    tmp.replace(path)


def save_untrained(
    path: Path, model: CompressionModel, *, arch: str, model_args: dict[str, Any]
) -> Path:
    """Save a codec that was never trained (random weights, for tests and benchmarks) in the
    same layout, with empty optimiser states: call `model.update(force=True)` before this."""
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(
        path,
        model,
        arch=arch,
        model_args=model_args,
        step=0,
        loss=0.0,
        optimizer=optimizer,
        aux_optimizer=optimizer,
        extra={},
    )
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train the codec first")
    try:
        record = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for files that are no checkpoint
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({type(err).__name__}); train the codec again"
        ) from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: not a codec checkpoint (a dict with a state_dict)")
    return record


def state_dict_of(record: dict[str, Any]) -> dict[str, Any]:
    """The model's state dict in a checkpoint, under one of the keys CompressAI accepts, or
    the record itself (a plain state dict, as the zoo's files are)."""
    for key in ("state_dict", "network", "model_state_dict"):
        if key in record:
            return record[key]
    return record


def load_codec(path: Path, arch: str | None = None) -> CompressionModel:
    """A model ready for `compress()`/`decompress()` from an icmflow or CompressAI checkpoint."""
    record = read_checkpoint(path)
    state_dict = state_dict_of(record)
    meta = record.get("icmflow")
    try:
        if meta is not None:
            model = create_model(meta["arch"], **meta["model_args"])
            model.load_state_dict(state_dict)  # CompressAI's override resizes the CDF buffers
        elif arch is not None:
            model = architecture(arch).from_state_dict(state_dict)
            model.update(force=True)
        else:
            raise CheckpointError(
                f"{path}: not an icmflow checkpoint; say which architecture it holds"
            )
    except (RuntimeError, KeyError) as err:  # load_state_dict's mismatches
        raise CheckpointError(
            f"{path}: its weights do not fit the architecture it names ({err})"
        ) from None
    return model.eval()
