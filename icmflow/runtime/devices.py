"""Where tensors run: `auto` picks CUDA when this process sees a GPU; a GPU asked for that this
process does not see is an error naming the setting, before anything runs."""

from __future__ import annotations

import os

import torch

from icmflow.core.errors import IcmflowError


def resolve_device(device: str, setting: str = "device") -> torch.device:
    """The torch device of `device` (a value of the param `setting`: named in errors)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise IcmflowError(
            f"{setting}: {device!r} is no device; use auto, cpu, cuda or cuda:<index>"
        ) from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise IcmflowError(
                f"{setting} is {device} but no CUDA device is visible to this process (no GPU, "
                f"a CPU build of PyTorch, or CUDA_VISIBLE_DEVICES empty); set {setting}: cpu "
                "(or auto)"
            )
        if resolved.index is not None and resolved.index >= count:
            raise IcmflowError(
                f"{setting} is {device}, but this process sees {count} CUDA GPU(s) "
                f"(cuda:0 to cuda:{count - 1}); set {setting} to one of them"
            )
    return resolved


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]
