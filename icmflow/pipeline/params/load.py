"""Reading params.yaml: YAML, then the schema, then the checks across sections."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from icmflow.datasets.formats import FORMATS
from icmflow.pipeline.params.codecs import FAMILIES, INIT_FORMS
from icmflow.pipeline.params.consistency import consistency_problems
from icmflow.pipeline.params.project import Params, ParamsError

_SHOWN = (str, int, float, bool, type(None))
"""Inputs quoted in messages: scalars only, never a whole section or file."""


def _describe(error: dict) -> tuple[str, str]:
    loc = [str(part) for part in error["loc"]]
    tags = {"datasets": set(FORMATS), "codecs": set(FAMILIES)}
    if len(loc) > 2 and loc[2] in tags.get(loc[0], ()):
        loc.pop(2)  # the union's tag is no key
    if loc[:1] == ["codecs"] and loc[2:3] == ["init"] and loc[3:4] and loc[3] in INIT_FORMS:
        loc.pop(3)  # nor the form of `init`
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (misspelt?)"
    elif error["type"] == "dataset_format":
        message += f" (got {error['input'].get('format')!r})"
    elif error["type"] != "missing" and isinstance(error.get("input"), _SHOWN):
        message += f" (got {error['input']!r})"
    return ".".join(loc) or "(top level)", message


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate `path`; every problem is reported at once in a `ParamsError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run icmflow from the project root") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    try:
        params = Params.model_validate(raw or {})
    except ValidationError as err:
        problems = [_describe(e) for e in err.errors()]
    else:
        problems = consistency_problems(params)
    if problems:
        lines = [f"  {key}: {message}" for key, message in problems]
        raise ParamsError(f"{path} is invalid:\n" + "\n".join(lines))
    return params
