"""One run at a time per work folder: a lock the operating system drops when its holder exits.

Two runs of one stage on one key (two `icmflow masks sample`) would share one work folder, and
each would delete or overwrite what the other is writing. A stage with a work folder therefore
holds an exclusive `flock` on a lock file beside it while it runs; the second run stops at once,
saying which process holds it. The kernel releases a `flock` when the process holding it ends in
any way (SIGKILL included), so a killed run never leaves a stale lock. The file stays (empty but
for the last holder's pid): deleting it would let a third run lock a new file while the second
still holds the old one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from icmflow.core.errors import IcmflowError


class BusyError(IcmflowError):
    """Another run of the same stage on the same key holds the lock."""


@contextmanager
def exclusive(path: Path, command: str) -> Iterator[None]:
    """Hold the lock at `path` while the block runs; `BusyError` naming `command` and the pid of
    the process that holds it when another does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise BusyError(
                f"another `{command}` is running (pid {holder}; it holds {path}): wait for it "
                "to finish, or stop it, then run this again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield  # closing the file at the end releases the lock
