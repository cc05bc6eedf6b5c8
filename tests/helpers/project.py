"""Where the project and the real samples are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = Path(os.environ.get("ICMFLOW_SAMPLES", REPO.parent / "shared" / "samples"))


def real_sample(name: str) -> Path:
    """A folder of ../shared/samples (or $ICMFLOW_SAMPLES); the test is skipped without it."""
    path = SAMPLES / name
    if not path.is_dir():
        pytest.skip(f"real sample {name} not found under {SAMPLES}")
    return path


def store_files(path: Path) -> dict[str, bytes]:
    """Every file under a store or folder, by relative path: to compare two byte for byte."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
