"""User-facing errors (one base class), and the policy that turns bad input entries into skips.

Every problem a user can fix raises an `IcmflowError` whose message names the file or the param
and says what to do; the CLI prints it in one line. Any other exception is a bug: the CLI says
so and shows its traceback with `icmflow -v`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


class IcmflowError(Exception):
    """A problem the user can fix; the message says where it is and how to fix it."""


class InputError(IcmflowError):
    """Bad input: names the file, the entry inside it, and what is wrong."""

    def __init__(self, file: str, entry: str, reason: str):
        self.file, self.entry, self.reason = str(file), entry, reason
        super().__init__(f"{self.file}: {entry}: {reason}" if entry else f"{self.file}: {reason}")


class MissingInputError(IcmflowError):
    """What a stage reads is missing or stale: an earlier stage has to run (again) first."""


class CheckpointError(IcmflowError):
    """A model checkpoint is missing, unreadable, or not what the params say it is."""


class BitstreamError(IcmflowError):
    """A bitstream is corrupt, or decoding it does not reproduce what its encoder computed."""


class UnknownNameError(IcmflowError):
    """A name that no registry knows; the message lists the registered ones."""


@dataclass(frozen=True)
class Skip:
    """One entry left out because `on_error` is `skip`."""

    file: str
    entry: str
    reason: str


@dataclass(frozen=True)
class Note:
    """Something about an entry that is kept as it is, but that the user should know."""

    file: str
    entry: str
    note: str


class ProblemLog:
    """Applies the `on_error` policy: raise an `InputError`, or record a `Skip` and log it.
    Notes on entries that are fine are recorded (and logged) whatever the policy."""

    def __init__(self, on_error: OnError):
        self.on_error = on_error
        self.skipped: list[Skip] = []
        self.notes: list[Note] = []

    def report(self, file: str, entry: str, reason: str, *, also_skipped: str = "") -> None:
        """Raise, or record the skip; `also_skipped` says what else the skip leaves out."""
        if self.on_error == "raise":
            raise InputError(file, entry, reason)
        skip = Skip(str(file), entry, f"{reason}; {also_skipped}" if also_skipped else reason)
        self.skipped.append(skip)
        log.warning("skipped %s: %s: %s", skip.file, skip.entry, skip.reason)

    def note(self, file: str, entry: str, note: str) -> None:
        self.notes.append(Note(str(file), entry, note))
        log.debug("note on %s: %s: %s", file, entry, note)

    def as_records(self) -> list[dict[str, str]]:
        return [asdict(s) for s in self.skipped]

    def note_records(self) -> list[dict[str, str]]:
        return [asdict(n) for n in self.notes]
