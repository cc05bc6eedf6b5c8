"""Reading params.yaml: YAML (a key given twice is an error, not the last one silently kept),
then the schema, then the checks across sections."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from icmflow.datasets.formats import FORMATS
from icmflow.pipeline.params.codecs import FAMILIES, INIT_FORMS, SECONDARY_TAGS
from icmflow.pipeline.params.consistency import consistency_problems
from icmflow.pipeline.params.project import Params, ParamsError

_SHOWN = (str, int, float, bool, type(None))
"""Inputs quoted in messages: scalars only, never a whole section or file."""


def _key(part: object) -> str:
    """A part of a dotted key as written, quoted when it holds more than a name can."""
    text = str(part)
    return text if re.fullmatch(r"[\w.-]+", text) else repr(text)


def _describe(error: dict) -> tuple[str, str]:
    loc = [str(part) for part in error["loc"]]
    tags = {"datasets": set(FORMATS), "codecs": set(FAMILIES)}
    if len(loc) > 2 and loc[2] in tags.get(loc[0], ()):
        loc.pop(2)  # the union's tag is no key
        if loc[0] == "codecs" and len(loc) > 2 and loc[2] in SECONDARY_TAGS:
            loc.pop(2)  # nor is a compressed-domain entry's kind
    if loc[:1] == ["codecs"] and loc[2:3] == ["init"] and loc[3:4] and loc[3] in INIT_FORMS:
        loc.pop(3)  # nor the form of `init`
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (misspelt?)"
    elif error["type"] == "dataset_format" and not isinstance(error["input"], dict):
        message = f"a dataset entry is a mapping (format, root, splits), not {error['input']!r}"
    elif error["type"] == "dataset_format":
        message += f" (got {error['input'].get('format')!r})"
    elif error["type"] != "missing" and isinstance(error.get("input"), _SHOWN):
        message += f" (got {error['input']!r})"
    if loc and loc[-1] == "[key]":  # a dict key itself: a name
        loc.pop()
        message = f"not a valid name: {message}"
    return ".".join(_key(part) for part in loc) or "(top level)", message


def _duplicate_keys(node: yaml.Node, key: str = "", seen: set[int] | None = None) -> list:
    """(key, message) of every key given twice in one mapping under `node` (YAML would keep
    the last silently), with both lines; `<<` merges may be overridden, as YAML intends."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already walked
        return []
    seen.add(id(node))
    children: list[tuple[str, yaml.Node]] = []
    problems = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key_node, value in node.value:
            name = f"{key}.{_key(key_node.value)}" if key else _key(key_node.value)
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line, identity = key_node.start_mark.line + 1, (key_node.tag, key_node.value)
                if identity in lines:
                    where = sorted({lines[identity], line})
                    at = " and ".join(map(str, where))
                    problems.append(
                        (name, f"given twice (line{'s' * (len(where) - 1)} {at}): keep one")
                    )
                lines.setdefault(identity, line)
            children.append((name, value))
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{key}[{i}]", value) for i, value in enumerate(node.value)]
    for name, child in children:
        problems += _duplicate_keys(child, name, seen)
    return problems


def _read_yaml(path: Path) -> tuple[object, list]:
    """The YAML document at `path`, and the keys given twice in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run icmflow from the project root") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ParamsError(f"{path}: cannot be read as a text file ({err})") from None
    try:
        loader = yaml.SafeLoader(text)  # which refuses unprintable characters at once
        try:
            node = loader.get_single_node()
            if node is None:
                return None, []
            twice = _duplicate_keys(node)  # before constructing: it merges `<<` keys in place
            return loader.construct_document(node), twice
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate `path`; every problem is reported at once in a `ParamsError`."""
    path = Path(path)
    raw, problems = _read_yaml(path)
    if not problems:
        try:
            params = Params.model_validate(raw or {})
        except ValidationError as err:
            problems = [_describe(e) for e in err.errors()]
        else:
            params._source = path
            problems = consistency_problems(params)
    if problems:
        lines = [f"  {key}: {message}" for key, message in problems]
        raise ParamsError(f"{path} is invalid:\n" + "\n".join(lines))
    return params
