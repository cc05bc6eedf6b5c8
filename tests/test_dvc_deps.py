"""dvc.yaml is current with params.yaml, and every stage depends on all the code it can run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from icmflow.pipeline.dvcfile import render, stage_code
from icmflow.pipeline.imports import PACKAGE_DIR, import_closure
from icmflow.pipeline.params import load_params
from tests.helpers.dvc import missing_code, resolved_stages
from tests.helpers.project import REPO


@pytest.mark.parametrize("project", [".", "papers", "task-driven", "studies/coco"])
def test_committed_dvc_yaml_is_generated_from_params_and_current(project):
    """Each DVC project's committed dvc.yaml (the demo's and the three beside it)."""
    root = REPO / project
    params_path = root / "params.yaml"
    text = render(load_params(params_path), yaml.safe_load(params_path.read_text()), root)
    assert (root / "dvc.yaml").read_text() == text, (
        f"{project}/dvc.yaml is stale: run `icmflow --params {project}/params.yaml pipeline`"
    )


def test_every_stage_depends_on_every_file_of_icmflow_it_imports():
    stages = resolved_stages(REPO)
    assert {"train@meanscale-mse-1", "encode@jpeg-q10", "evaluate@jpeg-q10"} <= set(stages)
    assert missing_code(stages, REPO) == {}


def test_the_check_finds_a_missing_file():
    stages = resolved_stages(REPO)
    cmd, deps = stages["train@meanscale-object-1"]
    without = {"train@x": (cmd, [d for d in deps if d != "icmflow/datasets/images.py"])}
    assert missing_code(without, REPO) == {"train@x": ["icmflow/datasets/images.py"]}


RUNTIME_MODULES = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print("\\n".join(m.__file__ for n, m in sys.modules.items()
                if n.split(".")[0] == "icmflow" and getattr(m, "__file__", None)))
"""


def test_static_closure_holds_what_python_imports():
    """The static import reading is checked against Python's own: what importing the stages'
    modules loads in a fresh interpreter is in their static closures."""
    stages = ("sample", "prepare", "masks", "train", "encode", "evaluate", "report")
    modules = ["icmflow.pipeline.cli", "icmflow.pipeline.params"]
    modules += [f"icmflow.stages.{stage}" for stage in stages]
    loaded = subprocess.run(
        [sys.executable, "-c", RUNTIME_MODULES, *modules],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.split()
    static = frozenset().union(*(stage_code(stage) for stage in stages))
    assert len(loaded) > 30 and {Path(p).resolve() for p in loaded} <= static


def test_closure_follows_function_level_and_relative_imports():
    closure = import_closure("icmflow.stages.masks")
    assert PACKAGE_DIR / "masks" / "sam_boxes.py" in closure  # imported inside run()
    assert (
        PACKAGE_DIR / "__init__.py" in closure and PACKAGE_DIR / "masks" / "__init__.py" in closure
    )
    assert PACKAGE_DIR / "datasets" / "formats" / "yolo.py" in import_closure(
        "icmflow.datasets.formats"
    )
