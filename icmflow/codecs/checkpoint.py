"""Checkpoints in CompressAI's layout, so they move between icmflow and CompressAI unchanged.

A checkpoint is `torch.save` of a dict with CompressAI's keys: `state_dict` (the model, saved after
`update(force=True)`, so it carries the entropy coder's CDF tables), `epoch`, `loss`, `optimizer`
and `aux_optimizer`, plus an `icmflow` entry (architecture name, its arguments, loss and λ).
CompressAI's `eval_model -a <arch> -p <checkpoint>` and `<ModelClass>.from_state_dict` read it;
`load_codec` also reads plain CompressAI checkpoints when given the architecture.

Checkpoints are read as weights only (`torch.load(weights_only=True)`): tensors and plain data
(dicts, lists, numbers, strings), all CompressAI's layout needs. A file that holds any other
Python object is refused, never unpickled: unpickling runs code the file names, so a checkpoint
from someone else could run anything. `load_weights` is that reader for every file icmflow
itself writes with `torch.save`.
"""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch
from compressai.models import CompressionModel

from icmflow.codecs.architectures import architecture, create_model
from icmflow.core.errors import CheckpointError
from icmflow.core.files import atomic_file


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
    with atomic_file(path) as tmp, tmp.open("wb") as handle:
        torch.save(_interned(record), handle)  # through Python's file: a full disk is an OSError


def _interned(value: Any) -> Any:
    """`value` with every string interned, so that equal records are equal bytes: pickle writes
    one string object once, and a resumed run's optimiser state has strings read from its
    state file, distinct from the equal ones the uninterrupted run's code made."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        copy = type(value)((_interned(k), _interned(v)) for k, v in value.items())
        if hasattr(value, "__dict__"):  # a state dict's `_metadata`
            copy.__dict__.update(value.__dict__)
        return copy
    if isinstance(value, (list, tuple)):
        return type(value)(_interned(v) for v in value)
    return value


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


def load_weights(path: Path, what: str, fix: str) -> Any:
    """What `torch.save` wrote to `path`, read as weights only (tensors and plain data); a
    `CheckpointError` naming the file, `what` it is and the `fix` when it is unreadable or holds
    other Python objects (which are never unpickled: that would run code the file names)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        named = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: this {what} holds Python objects{named} besides tensors and plain "
            "data, and loading them would run code the file names; icmflow reads weights only: "
            f"{fix}"
        ) from None
    except Exception as err:  # torch raises many types for files that are no checkpoint
        raise CheckpointError(
            f"{path}: not a PyTorch {what} ({type(err).__name__}); {fix}"
        ) from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train the codec first")
    record = load_weights(
        path,
        "checkpoint",
        "train the codec again, or save only its state_dict (CompressAI's layout) where it "
        "was trained",
    )
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
