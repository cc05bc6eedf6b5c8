"""Atomic file and directory writes: a reader never sees a half-written output.

`write_bytes` (and the writers built on it) and `remove` also take fsspec URLs
(`icmflow.core.storage`): there each file is one object written in one request.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from icmflow.core.storage import is_url, location, remove_tree, write_object


def remove(path: Path) -> None:
    """Remove a file or a directory tree if it exists."""
    if is_url(path):
        remove_tree(location(path))
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing whatever `dst` was; the last step is one rename.

    The old `dst` goes beside `src` to be deleted, so a run killed while deleting it leaves the
    remains among `src`'s work in progress, never beside `dst` (a folder later stages read);
    the next replace from there clears them.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in src.parent.glob(f".{dst.name}.old-*"):  # from a replace killed halfway
        remove(stale)
    if dst.exists():
        trash = src.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(src, dst)
        remove(trash)
    else:
        os.replace(src, dst)


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `final` only if the block completes."""
    tmp = _temporary_sibling(final)
    remove(tmp)
    try:
        tmp.mkdir(parents=True)
    except OSError as err:  # a read-only folder, say: name what was to be written
        raise OSError(err.errno, err.strerror, str(final)) from err
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    replace(tmp, final)


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write that becomes `final` only if the block completes; a
    failed write (a full disk, say) leaves neither it nor a half-written `final` behind, and
    its `OSError` names `final` (a failed `write` names no file)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(final)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (a URL: one object)."""
    if is_url(path):
        write_object(location(path), data)
        return
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _standard_json(obj: Any) -> Any:
    """Replace NaN and infinities, which JSON cannot hold, by null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _standard_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard_json(v) for v in obj]
    return obj


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write `rows` as CSV with a header of `columns` (other keys ignored), atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write standard JSON (non-finite floats become null) atomically."""
    write_text(path, json.dumps(_standard_json(obj), indent=indent, allow_nan=False) + "\n")
