"""The effective configuration: every default filled in (`icmflow params --resolved`)."""

from __future__ import annotations

from typing import Any

from icmflow.pipeline.params.project import Params


def resolved(params: Params) -> dict[str, Any]:
    """`params` with every default written out; each trained codec's `train` is the settings
    it trains with (the shared `train` and its overrides), so the result is itself a
    params.yaml that trains, codes and reports the same."""
    data = params.model_dump(mode="json")
    for name in params.trained_codecs:
        data["codecs"][name]["train"] = params.training(name).model_dump(mode="json")
    return data
