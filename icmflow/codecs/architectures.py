"""Codec architectures by name, through CompressAI's own registry.

`compressai.registry.MODELS` maps names such as `bmshj2018-hyperprior` to model classes; models
registered there with `compressai.registry.register_model` (icmflow's own, or a user's) are found
here too, so a new architecture needs no change to icmflow.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from compressai.models import CompressionModel
from compressai.registry import MODELS

from icmflow.core.errors import UnknownNameError


def image_architectures() -> list[str]:
    """Registered image codecs (CompressAI also registers point-cloud models)."""
    return sorted(name for name in MODELS if "pcc" not in name)


def architecture(name: str) -> type[CompressionModel]:
    if name not in MODELS:
        raise UnknownNameError(
            f"unknown codec architecture {name!r}; registered: {', '.join(image_architectures())}"
        )
    return MODELS[name]


def _accepted_arguments(cls: type) -> set[str] | None:
    """Keyword arguments a constructor takes, following `**kwargs` up the class hierarchy
    (CompressAI's models pass them on to `CompressionModel`); None: any."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None


def _size_kind(parameter: inspect.Parameter) -> str | None:
    """`int` for a constructor parameter that is a size (a channel or block count: typed int,
    an int default, or CompressAI's untyped, required `N` and `M`), `ints` for a sequence of
    sizes, None for anything else."""
    annotation, default = parameter.annotation, parameter.default
    if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        return None
    if annotation is not parameter.empty:
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        text = str(text).replace(" ", "")
        if text == "int":
            return "int"
        return "ints" if text.endswith("[int]") or text.endswith("[int,...]") else None
    if default is parameter.empty or (isinstance(default, int) and not isinstance(default, bool)):
        return "int"
    sizes = isinstance(default, (list, tuple)) and default
    return "ints" if sizes and all(type(v) is int for v in default) else None


def _is_size(value: Any) -> bool:
    return type(value) is int and value > 0


def _size_problems(cls: type, model_args: dict[str, Any]) -> list[str]:
    """The model_args that should be sizes and are not positive integers."""
    parameters = inspect.signature(cls).parameters
    problems = []
    for key, value in model_args.items():
        kind = _size_kind(parameters[key]) if key in parameters else None
        if kind == "int" and not _is_size(value):
            problems.append(f"{key} must be a positive integer (got {value!r})")
        elif kind == "ints" and not (
            isinstance(value, list) and value and all(_is_size(v) for v in value)
        ):
            problems.append(f"{key} must be a list of positive integers (got {value!r})")
    return problems


def model_args_problem(name: str, model_args: dict[str, Any]) -> str | None:
    """Why `model_args` do not fit the constructor of `name`, without building the model."""
    cls = architecture(name)
    accepted = _accepted_arguments(cls)
    unknown = sorted(set(model_args) - accepted) if accepted is not None else []
    if unknown:
        takes = ", ".join(sorted(accepted))
        return f"{name} takes no argument {', '.join(unknown)} (it takes {takes})"
    try:
        inspect.signature(cls).bind(**model_args)
    except TypeError as err:
        return f"{name} does not take these model_args: {err}"
    if problems := _size_problems(cls, model_args):
        return f"{name}: " + "; ".join(problems)
    return None


def create_model(name: str, *, seed: int | None = None, **kwargs: Any) -> CompressionModel:
    """A randomly initialised model of the registered architecture `name`.

    With `seed`, torch's generator is seeded first, so the initial weights (and with them a
    whole training run) are the same every time.
    """
    cls = architecture(name)
    problem = model_args_problem(name, kwargs)
    if problem:
        raise ValueError(problem)
    if seed is not None:
        torch.manual_seed(seed)
    return cls(**kwargs)
