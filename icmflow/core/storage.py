"""Where stores live: a local path, or an fsspec URL (`s3://…`, `gs://…`, `file://…`, `memory://…`).

`location` turns either into a path object: a `pathlib.Path`, or a `upath.UPath` (the same API
over fsspec) for a URL, so code that joins, tests, reads and writes paths works on both. Dask
workers on several machines then write one shared store. Credentials and endpoints come from the
filesystem's own configuration (S3: the AWS environment variables or files, `AWS_ENDPOINT_URL`
for MinIO or another S3 API), never from params.

Object stores cannot rename a folder in one step: stores at a URL are written in place, each
object in one request (a reader sees the whole object or none of it), and a marker written last
says a store is whole (`icmflow.core.completion`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
from upath import UPath

from icmflow.core.errors import IcmflowError

PROBE = ".icmflow-probe"
"""The object `require_writable` writes and deletes."""


def is_url(path: Any) -> bool:
    """True for a `protocol://…` string (an fsspec URL) or a `UPath`, false for a local path
    (and for anything else, such as a zarr store object)."""
    return isinstance(path, UPath) or (isinstance(path, str) and "://" in path)


def location(path: Path | str) -> Path:
    """`path` as a path object: `Path` when local, `UPath` (fsspec) when a URL."""
    if isinstance(path, (UPath, Path)):
        return path
    return UPath(path) if is_url(path) else Path(path)


def check_url(url: str) -> str:
    """`url` if fsspec can write there; else a `ValueError` saying what to install or fix."""
    protocol = url.split("://", 1)[0]
    if not protocol or protocol not in fsspec.available_protocols():
        raise ValueError(
            f"{url}: unknown storage protocol {protocol!r}; use a local path or an fsspec URL "
            "such as s3://bucket/prefix, gs://bucket/prefix or file:///shared/folder"
        )
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        raise ValueError(f"{url}: {err}") from None
    return url.rstrip("/")


def write_object(path: Path, data: bytes) -> None:
    """Write `data` to the object at URL `path` in one request: whole or absent for readers."""
    if path.protocol in ("file", "local"):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.fs.pipe_file(path.path, data)


def require_writable(url: str, setting: str) -> None:
    """Write and delete a probe object under `url` (the value of the param `setting`), so that
    missing credentials, a missing bucket or a refusal stop a stage before any work, with an
    error naming the setting, instead of failing in every worker."""
    probe = location(url) / PROBE
    try:
        write_object(probe, b"")
        probe.fs.rm(probe.path)
    except Exception as err:  # each filesystem raises its own types (botocore, gcsfs, ...)
        raise IcmflowError(
            f"{setting} {url}: cannot write there ({type(err).__name__}: {err}); give the "
            "filesystem its credentials as its own configuration expects them (S3: the "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables or ~/.aws, and AWS_ENDPOINT_URL "
            "for MinIO), create the bucket, or fix the URL"
        ) from None


def remove_tree(path: Path) -> None:
    """Remove everything under URL `path` (nothing when there is nothing)."""
    if path.fs.exists(path.path):
        path.fs.rm(path.path, recursive=True)


def download(url: Path | str, local: Path) -> None:
    """Copy the store at `url` into the new local folder `local`."""
    source = location(url)
    local.mkdir(parents=True)
    source.fs.get(source.path.rstrip("/") + "/", str(local), recursive=True)
