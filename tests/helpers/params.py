"""params.yaml edits tests make: tiny codec entries."""

from __future__ import annotations

from typing import Any


def learned_entry(
    objective: str = "mse", lmbda: float = 0.01, arch: str = "bmshj2018-hyperprior", **train: Any
) -> dict[str, Any]:
    """A codec entry of a tiny learned codec (N = M = 8), with optional training overrides."""
    entry: dict[str, Any] = {
        "family": "learned",
        "arch": arch,
        "model_args": {"N": 8, "M": 8},
        "objective": objective,
        "lmbda": lmbda,
    }
    if train:
        entry["train"] = train
    return entry
