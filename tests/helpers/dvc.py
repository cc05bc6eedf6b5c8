"""Reading a project's pipeline the way DVC does, and running DVC on a copy of the project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.project import REPO

BIN = Path(sys.executable).parent


def project_files(root: Path = REPO) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if (root / f).is_file()]


def copy_project(target: Path) -> Path:
    """The project's files (not its outputs) in `target`, a git repository of its own."""
    for name in project_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)
    run(["git", "init", "-q"], target)
    return target


def run(
    cmd: list[str], cwd: Path, *, check: bool = True, pythonpath: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a command in `cwd` with the project's environment, importing `cwd`'s own icmflow
    (or `pythonpath`'s: a project in a subfolder of the source tree, e.g. papers/)."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(pythonpath or cwd),
    }
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def status(project: Path) -> set[str]:
    """The stages `dvc status` finds out of date."""
    return set(json.loads(run(["dvc", "status", "--json"], project).stdout))


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def resolved_stages(root: Path) -> dict[str, tuple[str, list[str]]]:
    """Every stage of `root`'s dvc.yaml as DVC resolves it: name -> (command, dependencies)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            stage.addressing: (stage.cmd, [os.path.relpath(d.fs_path, root) for d in stage.deps])
            for stage in repo.index.stages
        }


def missing_code(stages: dict[str, tuple[str, list[str]]], root: Path) -> dict[str, list[str]]:
    """Files of icmflow that each `icmflow <stage>` command can run but its deps do not cover
    (`root`: what the deps are relative to, the source tree holding this icmflow)."""
    from icmflow.pipeline.dvcfile import stage_code

    missing = {}
    for name, (cmd, deps) in stages.items():
        command = cmd.split()[1]
        needed = {Path(p).relative_to(root).as_posix() for p in stage_code(command)}
        covered = {
            n for n in needed if any(n == d or n.startswith(d.rstrip("/") + "/") for d in deps)
        }
        if needed - covered:
            missing[name] = sorted(needed - covered)
    return missing
