"""The Python API (`import icmflow`): the README's "Python API" examples run as written, on a
tiny codec and the generated sample laid out as the demo's project."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

import icmflow
from icmflow import api
from icmflow.datasets.prepared import write_prepared
from icmflow.pipeline.paths import Paths
from tests.helpers.builders import save_codec
from tests.helpers.codecs import tiny_codec
from tests.helpers.project import REPO


def section_blocks(title: str) -> list[str]:
    """The python code blocks of README section `## <title>`."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def demo_project(tmp_path, monkeypatch, sample_prepared, sample_masks):
    """The files the examples read, where `make demo` puts them."""
    paths = Paths(tmp_path)
    val = sample_prepared["val"]
    final = paths.prepared("sample")
    write_prepared(final / "val.json", val.data, image_root=val.image_root, final_dir=final)
    shutil.copytree(sample_masks["val"], paths.mask_store("object", "sample", "val"))
    args = {"N": 16, "M": 16}
    save_codec(tiny_codec(gain=8.0, **args), paths.checkpoint("meanscale-object-2"), args)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_examples_run(demo_project, capsys):
    blocks = section_blocks("Python API")
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md (Python API)", "exec"), namespace)
    assert (demo_project / "object-mask.png").is_file()
    assert namespace["scores"]["map"] == pytest.approx(1.0)
    assert "bpp with JPEG q25" in capsys.readouterr().out


def test_the_package_exports_the_api_lazily():
    assert tuple(api.__all__) == icmflow.API
    assert all(getattr(icmflow, name) is getattr(api, name) for name in api.__all__)
    with pytest.raises(AttributeError):
        icmflow.no_such_name  # noqa: B018
    code = "import sys, icmflow, icmflow.pipeline.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the CLI starts without PyTorch
