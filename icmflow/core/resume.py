"""Work directories that let an interrupted stage continue where it stopped.

A work directory belongs to one fingerprint (a digest of everything its result depends on). A rerun
with the same fingerprint finds its earlier work; any other fingerprint empties it first.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path
from typing import Any

from icmflow.core.files import remove, write_text
from icmflow.core.storage import is_url, location

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A digest of picklable parts: equal inputs built the same way, equal fingerprint.

    Pickle, not JSON: it is several times faster on the large annotation lists masks depend on.
    """
    return hashlib.sha256(pickle.dumps(parts, protocol=5)).hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class WorkDir:
    """`path` holds work toward the result identified by `digest`."""

    def __init__(self, path: Path | str, digest: str):
        self.path, self.digest = location(path), digest
        self._marker = self.path / "fingerprint"

    def resume(self) -> bool:
        """True if earlier work for this digest is here; otherwise start `path` empty."""
        if self._marker.is_file() and self._marker.read_text() == self.digest:
            log.info("resuming from %s", self.path)
            return True
        remove(self.path)
        if not is_url(self.path):  # object stores have no folders
            self.path.mkdir(parents=True)
        return False

    def seal(self) -> None:
        """Record that the work directory is initialised for this digest (call after setup)."""
        write_text(self._marker, self.digest)

    def discard(self) -> None:
        remove(self.path)
