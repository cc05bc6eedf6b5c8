"""Provenance written beside every stage's outputs: params used, git revision, package versions."""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from icmflow.core.files import write_json

PACKAGES = (
    "icmflow",
    "torch",
    "torchvision",
    "compressai",
    "numpy",
    "zarr",
    "dask",
    "distributed",
    "pycocotools",
    "pillow",
    "bjontegaard",
    "pytorch-msssim",
    "dvc",
)


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def git_state() -> dict[str, Any]:
    """The commit checked out and whether tracked files differ from it."""
    revision = _git("rev-parse", "HEAD")
    if revision is None:
        return {"revision": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"revision": revision, "dirty": bool(status)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_provenance(
    directory: Path,
    stage: str,
    params: dict[str, Any],
    *,
    command: str | None = None,
    inputs: Mapping[str, str] | None = None,
) -> None:
    """Write `directory/provenance.json` (no timestamp: reruns of the same inputs match); with
    the `command` that made the outputs and the digests of the `inputs` it read, which later
    stages check theirs against (`icmflow.pipeline.freshness`)."""
    record: dict[str, Any] = {"stage": stage, "params": params}
    if command is not None:
        record["command"] = command
    if inputs is not None:
        record["inputs"] = dict(inputs)
    write_json(
        directory / "provenance.json",
        record
        | {
            "git": git_state(),
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
    )
