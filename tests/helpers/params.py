"""params.yaml edits tests make: tiny codec entries."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.project import REPO


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


def edit_params(project: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Apply `change` to the params.yaml of `project` (a dict edited in place)."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    change(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def sample_params(root: Path, sample: Path, codecs: dict[str, Any]) -> dict[str, Any]:
    """The project's params cut to the sample (copied from `sample` to `root/coco`) and `codecs`:
    one worker everywhere, no training split coded, no tasks, JPEG the report's anchor."""
    shutil.copytree(sample, root / "coco")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {"sample": {**params["datasets"]["sample"], "root": str(root / "coco")}}
    params["masks"].update(n_workers=1, images_per_shard=4)
    params["codecs"] = codecs
    params["encode"].update(n_workers=1, train_split=None)
    params["tasks"] = {}
    params["report"]["anchors"] = ["jpeg"]
    return params
