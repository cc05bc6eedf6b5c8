"""Codec architectures by name, through CompressAI's own registry.

`compressai.registry.MODELS` maps names such as `bmshj2018-hyperprior` to model classes; models a
user registers there with `compressai.registry.register_model` are found here too, so a new
architecture needs no change to icmflow.
"""

from __future__ import annotations

from typing import Any

import torch
from compressai.models import CompressionModel
from compressai.registry import MODELS

IMAGE_MODELS = sorted(name for name in MODELS if "pcc" not in name)
"""Registered image codecs (CompressAI also registers point-cloud models)."""


def create_model(name: str, *, seed: int | None = None, **kwargs: Any) -> CompressionModel:
    """A randomly initialised model of the registered architecture `name`.

    With `seed`, torch's generator is seeded first, so the initial weights (and with them a
    whole training run) are the same every time.
    """
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown codec architecture {name!r}; registered: {', '.join(IMAGE_MODELS)}"
        ) from None
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{name}: bad model_args {kwargs}: {err}") from None
