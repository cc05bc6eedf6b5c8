"""The source files a module runs: its import closure inside the `icmflow` package.

DVC reruns a stage when one of its dependencies changes, so a stage must depend on every file of
icmflow that its command can execute. `import_closure` reads the imports of a module statically
(every `import` statement in the file, including those inside functions, which a run-time
`sys.modules` snapshot would miss), follows those into icmflow transitively, and adds the
`__init__.py` of every package on the way, since importing `icmflow.a.b` runs `icmflow/__init__.py`
and `icmflow/a/__init__.py` first. Registries fill themselves by importing their entries in their
package's `__init__.py`, so what a registry can look up by name is in the closure too.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "icmflow"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The folder of the `icmflow` package this module belongs to."""


def module_file(module: str) -> Path | None:
    """The source file of an icmflow module or package, or None if there is none."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path, *, top_level: bool = False) -> set[str]:
    """Every module an `import` statement of `path` may load (submodules of `from` imports too);
    with `top_level`, only the statements that run on import, not those inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: level 1 is this package, 2 its parent, ...
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{source}" if source else base
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


@cache
def import_closure(module: str) -> frozenset[Path]:
    """The icmflow source files that importing `module` can execute (absolute paths)."""
    todo, seen = [module], set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        files.add(path)
        todo.extend(_parents(name))
        todo.extend(m for m in _imported(path) if m.split(".")[0] == PACKAGE)
    return frozenset(files)


def top_level_closure(module: str) -> frozenset[Path]:
    """The files importing `module` runs, without what its functions import when called (a
    CLI module whose commands each import their own code)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    files = {path}
    for name in [*_parents(module), *_imported(path, top_level=True)]:
        if name.split(".")[0] == PACKAGE:
            files |= import_closure(name)
    return frozenset(files)
