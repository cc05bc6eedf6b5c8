"""Completion markers: how a reader knows a store's build finished, with or without a rename.

A store at a URL is written in place; its last write is `_COMPLETE`, holding the fingerprint of
what was built, and readers refuse a store without it (`require_complete`). Local stores keep
their temporary folder and final rename and get the marker too, so one reader serves both.
"""

from __future__ import annotations

from pathlib import Path

from icmflow.core.errors import MissingInputError
from icmflow.core.files import write_text
from icmflow.core.storage import location

COMPLETE = "_COMPLETE"
"""The marker of a whole store, written last; it holds the store's fingerprint."""


def mark_complete(root: Path | str, digest: str) -> None:
    """Write the completion marker of the store at `root`: the last write of its build."""
    write_text(location(root) / COMPLETE, digest)


def completed(root: Path | str) -> str | None:
    """The fingerprint in the completion marker of `root`; None while it has no marker."""
    marker = location(root) / COMPLETE
    try:
        return marker.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def require_complete(root: Path | str, what: str, fix: str) -> None:
    """Refuse a store whose build has not finished (no completion marker)."""
    if completed(root) is None:
        exists = location(root).exists()
        state = "incomplete (its build was interrupted or is still running)" if exists else "absent"
        raise MissingInputError(f"{root}: {what} is {state}, it has no {COMPLETE} marker; {fix}")
