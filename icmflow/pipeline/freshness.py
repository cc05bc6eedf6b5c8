"""Stale inputs: a stage run by hand never measures what an older upstream made.

DVC reruns everything downstream of a change; a stage run by hand (`icmflow evaluate x` after
retraining x) would otherwise read the coded images of the old checkpoint without a word. So
every stage records, in its outputs' `provenance.json`, the command that made them (`command`)
and a digest of every input it read (`inputs`: path, relative to the project, -> digest); and
before it runs, it checks the inputs it is about to read: each input's own record (the
`provenance.json` of the nearest folder holding it) names what *that* was made from, and an
upstream whose digest has changed since makes the input stale: the stage stops with
"X was made from an older Y: rerun `<X's command>`". The check walks the whole chain (a coded
dataset's checkpoint, that checkpoint's training data, ...), the furthest stale link first, so
the command it names is the first one to rerun.

Digests are cheap: a file's SHA-256 (checkpoints, prepared JSONs, bpp tables, metrics; each file
hashed once per process), a mask store's recorded fingerprint (its shards are never read). A
coded dataset is identified by its split's bpp table, which holds the digest of every bitstream
and decoded image. Outputs without a record (made by hand, or by an older icmflow) and upstreams
that are gone are taken as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from icmflow.core.errors import IcmflowError
from icmflow.core.resume import file_digest
from icmflow.pipeline.params import Params

RECORD = "provenance.json"
_digests: dict[tuple[str, int, int], str] = {}


class StaleInputError(IcmflowError):
    """An input was made from an upstream that has changed since; the message names the
    command to rerun."""


def command(params: Params, *args: str) -> str:
    """The command line of a stage, with `--params` when the params file is not the default."""
    source = [] if params.source == Path("params.yaml") else ["--params", str(params.source)]
    return " ".join(["icmflow", *source, *args])


def digest(path: Path) -> str:
    """What identifies `path`: a mask store's fingerprint, else the file's SHA-256 (computed
    once per process for the same size and modification time)."""
    path = Path(path)
    if path.is_dir():
        from icmflow.masks.store import store_attrs

        return str(store_attrs(path)["fingerprint"])
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = file_digest(path)
    return _digests[key]


def _name(root: Path, path: Path) -> str:
    """`path` as records name it: relative to the project root when inside it."""
    absolute, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return absolute.relative_to(base).as_posix() if absolute.is_relative_to(base) else str(path)


def record_inputs(root: Path, inputs: Iterable[Path]) -> dict[str, str]:
    """The `inputs` record of the files and mask stores a stage read."""
    return {_name(root, path): digest(path) for path in inputs}


def _record_of(root: Path, path: Path) -> tuple[Path, dict] | None:
    """The nearest folder above `path`, inside the project, with a record, and the record."""
    base = Path(os.path.abspath(root))
    folder = Path(os.path.abspath(path)).parent
    while folder.is_relative_to(base):
        record = folder / RECORD
        if record.is_file():
            try:
                return folder, json.loads(record.read_text())
            except ValueError:
                return None
        if folder == base:
            break
        folder = folder.parent
    return None


def require_current(root: Path, inputs: Iterable[Path]) -> None:
    """Stop with the command to rerun when an input (or anything it was made from) was made
    from an upstream that has changed since it was made."""
    checked: set[Path] = set()

    def visit(path: Path) -> None:
        found = _record_of(root, path)
        if found is None or found[0] in checked:
            return
        folder, record = found
        checked.add(folder)
        upstreams = {
            name: Path(name) if Path(name).is_absolute() else root / name
            for name in record.get("inputs") or {}
        }
        upstreams = {name: path for name, path in upstreams.items() if path.exists()}
        for path in upstreams.values():  # the furthest stale link first
            visit(path)
        for name, path in upstreams.items():
            if digest(path) != record["inputs"][name]:
                rerun = record.get("command") or "the stage that made it"
                raise StaleInputError(
                    f"{_name(root, folder)} was made from an older {name}: rerun `{rerun}` "
                    "first (`dvc repro` reruns everything out of date)"
                )

    for path in inputs:
        visit(Path(path))


def current_inputs(root: Path, inputs: Iterable[Path]) -> dict[str, str]:
    """Check that `inputs` are current (`require_current`); their `inputs` record."""
    inputs = list(inputs)
    require_current(root, inputs)
    return record_inputs(root, inputs)
