"""Property tests of bad params files: mutations of a small valid params.yaml (wrong types,
infinities and NaN, negative sizes, unknown keys, bad names, keys given twice, missing sections,
truncated or binary files). For every one, the checks `icmflow pipeline` makes raise a
`ParamsError` whose lines name the key at fault, and the CLI exits 1 (a user's problem), never 2
(a bug)."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from icmflow.pipeline.cli import app
from icmflow.pipeline.params import ParamsError, check_registered, load_params
from icmflow.pipeline.params.sections import NAME_PATTERN
from tests.helpers.params import learned_entry

BASE: dict[str, Any] = {
    "datasets": {
        "sample": {
            "format": "coco",
            "root": "data/sample/coco",
            "splits": {
                "train": {"annotations": "train.json", "images": "train"},
                "val": {"annotations": "val.json", "images": "val"},
            },
        }
    },
    "masks": {"images_per_shard": 4, "n_workers": 1},
    "train": {"steps": 10, "batch_size": 2, "patch_size": 64, "lr": 0.001, "save_every": 5},
    "codecs": {
        "tiny": learned_entry(steps=5, lr=0.002),
        "jpeg-q50": {"family": "jpeg", "quality": 50},
    },
    "encode": {"split": "val", "n_workers": 1, "images_per_task": 4},
    "report": {"anchors": ["jpeg"]},
}
"""A small valid params file: one dataset, a tiny learned codec and a JPEG anchor."""

SIZES = [
    ("train", "steps"),
    ("train", "batch_size"),
    ("train", "patch_size"),
    ("train", "save_every"),
    ("masks", "images_per_shard"),
    ("masks", "n_workers"),
    ("encode", "images_per_task"),
    ("codecs", "tiny", "model_args", "N"),
    ("codecs", "tiny", "model_args", "M"),
    ("codecs", "tiny", "train", "steps"),
    ("codecs", "jpeg-q50", "quality"),
]
"""Keys that must be positive."""

REQUIRED = [
    (("datasets",), "datasets"),
    (("codecs",), "codecs"),
    (("report",), "report"),
    (("report", "anchors"), "report.anchors"),
    (("codecs", "tiny", "lmbda"), "codecs.tiny.lmbda"),
    (("codecs", "tiny", "arch"), "codecs.tiny.arch"),
    (("codecs", "tiny", "family"), "codecs.tiny"),
    (("datasets", "sample", "root"), "datasets.sample.root"),
    (("datasets", "sample", "splits"), "datasets.sample.splits"),
]
"""Keys without a default, and the key an error about their absence names."""

runner = CliRunner()
checked = settings(
    max_examples=20,
    deadline=5000,
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def leaves(tree: Any, path: tuple = ()) -> list[tuple]:
    """The paths of every scalar in `tree`."""
    if isinstance(tree, dict):
        return [p for key, value in tree.items() for p in leaves(value, (*path, key))]
    if isinstance(tree, list):
        return [p for i, value in enumerate(tree) for p in leaves(value, (*path, i))]
    return [path]


def mappings(tree: Any, path: tuple = ()) -> list[tuple]:
    """The paths of every mapping in `tree` (the root included)."""
    if not isinstance(tree, dict):
        return []
    return [path] + [p for key, value in tree.items() for p in mappings(value, (*path, key))]


def with_value(path: tuple, value: Any) -> dict:
    params = copy.deepcopy(BASE)
    parent = params
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return params


def value_at(path: tuple) -> Any:
    tree = BASE
    for key in path:
        tree = tree[key]
    return tree


def named(path: tuple) -> str:
    """The key an error about the value at `path` names: the path itself, but a list's rather
    than its item's, the entry's for the tags that choose its kind, and `model_args` for its
    arguments (checked against the architecture as a whole)."""
    path = tuple(part for part in path if not isinstance(part, int))
    if path[-1] in ("family", "format") or "model_args" in path[:-1]:
        path = path[:-1]
    return ".".join(str(part) for part in path)


def assert_refused(file: Path, text: str | bytes, key: str | None) -> None:
    """`file` holding `text` is refused by the checks and the CLI, naming `key` (when known)."""
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text, encoding="utf-8")
    with pytest.raises(ParamsError) as err:
        check_registered(load_params(file))
    message = str(err.value)
    assert message.startswith(str(file)), message
    if key is not None:
        assert key in message, message
        problems = message.splitlines()[1:]
        assert problems and all(re.match(r"  \S.*?: ", line) for line in problems), message
    result = runner.invoke(app, ["--params", str(file), "pipeline"])
    assert result.exit_code == 1, result.output
    assert key is None or key in result.output, result.output


@pytest.fixture(scope="module")
def file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("params") / "other.yaml"


def test_the_base_is_valid(file):
    file.write_text(yaml.safe_dump(BASE))
    params = load_params(file)
    check_registered(params)
    assert params.source == file


wrong_types = st.one_of(
    st.text(alphabet="abcxyz", min_size=1, max_size=5).map(lambda s: f"{s}!"),
    st.lists(st.integers(), min_size=1, max_size=3),
    st.dictionaries(st.sampled_from("xyz"), st.integers(), min_size=1, max_size=2),
)
"""Values no setting here takes: words (which read as no number and name nothing), lists,
mappings."""
PATHS = ("root", "annotations", "images")
"""Settings any text is valid for."""


@checked
@given(path=st.sampled_from(leaves(BASE)), value=wrong_types)
def test_wrong_types(file, path, value):
    if path[-1] in PATHS and isinstance(value, str):
        return
    assert_refused(file, yaml.safe_dump(with_value(path, value)), named(path))


NUMBERS = [
    p
    for p in leaves(BASE)
    if isinstance(value_at(p), (int, float)) and type(value_at(p)) is not bool
]


@checked
@given(path=st.sampled_from(NUMBERS), value=st.sampled_from([math.inf, -math.inf, math.nan]))
def test_infinities_and_nan(file, path, value):
    assert_refused(file, yaml.safe_dump(with_value(path, value)), named(path))


@checked
@given(path=st.sampled_from(SIZES), value=st.integers(max_value=0))
def test_sizes_that_are_not_positive(file, path, value):
    assert_refused(file, yaml.safe_dump(with_value(path, value)), named(path))


@checked
@given(
    parent=st.sampled_from(mappings(BASE)),
    key=st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True),
    value=st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
)
def test_unknown_keys(file, parent, key, value):
    if key in value_at(parent) or (parent == ("codecs",) and key == "original"):
        return
    params = with_value((*parent, key), value)
    assert_refused(file, yaml.safe_dump(params), named((*parent, key)))


@checked
@given(
    section=st.sampled_from(["codecs", "datasets"]),
    name=st.text(min_size=1, max_size=8).filter(lambda n: not re.match(NAME_PATTERN, n)),
)
def test_bad_names(file, section, name):
    params = copy.deepcopy(BASE)
    first = next(iter(params[section]))
    params[section][name] = params[section].pop(first)
    assert_refused(file, yaml.safe_dump(params, allow_unicode=True), section)


def block_lines(text: str) -> list[tuple[int, str]]:
    """(line index, dotted key) of every `key: scalar` line of block-style YAML."""
    found, stack = [], []
    for index, line in enumerate(text.splitlines()):
        match = re.match(r"^( *)([A-Za-z0-9_-]+): (.+)$", line)
        opening = re.match(r"^( *)([A-Za-z0-9_-]+):$", line)
        if not (match or opening):
            continue
        indent, key = len((match or opening)[1]), (match or opening)[2]
        stack = [(i, k) for i, k in stack if i < indent]
        if match:
            found.append((index, ".".join([k for _, k in stack] + [key])))
        else:
            stack.append((indent, key))
    return found


@checked
@given(data=st.data())
def test_keys_given_twice(file, data):
    text = yaml.safe_dump(BASE, default_flow_style=False)
    index, key = data.draw(st.sampled_from(block_lines(text)))
    lines = text.splitlines()
    lines.insert(index + 1, lines[index])
    assert_refused(file, "\n".join(lines) + "\n", f"{key}: given twice")


@checked
@given(required=st.sampled_from(REQUIRED))
def test_missing_sections_and_keys(file, required):
    path, key = required
    params = copy.deepcopy(BASE)
    parent = params
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    assert_refused(file, yaml.safe_dump(params), key)


@checked
@given(cut=st.integers(min_value=0, max_value=len(yaml.safe_dump(BASE)) - 1))
def test_truncated_files(file, cut):
    file.write_text(yaml.safe_dump(BASE)[:cut])
    try:
        check_registered(load_params(file))
    except ParamsError as err:
        assert str(err).startswith(str(file))
        result = runner.invoke(app, ["--params", str(file), "pipeline"])
        assert result.exit_code == 1, result.output
    # else: the part left is a whole params file (the sections cut off have defaults)


@checked
@given(data=st.binary(min_size=1, max_size=64))
def test_binary_files(file, data):
    assert_refused(file, data, None)
