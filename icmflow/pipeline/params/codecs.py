"""Codec entries: `codecs.<name>` of params.yaml, each with a `family`.

- `family: learned`: a CompressAI architecture (`arch`, `model_args`) trained with a registered
  objective (`objective`, `lmbda`, `objective_args`); `train` overrides the shared training
  settings for this codec only. Gets train@, encode@ and evaluate@ stages.
- a classical family (`jpeg`, `webp`, `avif`, `heif`: `icmflow.coding.classical.CLASSICAL`) with
  its own settings (`quality`, ...). Gets encode@ and evaluate@.

Architectures and objectives are checked against their registries by `registered`, which
imports PyTorch and CompressAI, so that the stages that need neither start in a second.

`series` names the RD curve a codec is a point of (default: `<arch>-<objective>` for learned
codecs, the family for classical ones); BD-rates compare series.
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Annotated, Any, Literal

from pydantic import Field, create_model

from icmflow.coding.classical import CLASSICAL, PillowCodec
from icmflow.pipeline.params.sections import NAME_PATTERN, Section, TrainOverrides

SeriesField = Field(None, pattern=NAME_PATTERN, description="the RD curve this codec is on")


class LearnedEntry(Section):
    family: Literal["learned"]
    arch: str = Field(description="a name in compressai.registry.MODELS")
    model_args: dict[str, Any] = Field(default_factory=dict)
    objective: str = Field(description="a registered training objective")
    lmbda: float = Field(gt=0, description="λ on CompressAI's scale: R + λ·255²·D")
    objective_args: dict[str, Any] = Field(default_factory=dict)
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    series: str | None = SeriesField

    @property
    def series_name(self) -> str:
        return self.series or f"{self.arch}-{self.objective}"

    @property
    def setting(self) -> str:
        """What places this codec on its series' curve."""
        return f"λ={self.lmbda:g}"


class _ClassicalSeries:
    family: str
    series: str | None

    @property
    def series_name(self) -> str:
        return self.series or self.family

    @property
    def setting(self) -> str:
        return f"q={getattr(self, 'quality', '?')}"

    def codec(self) -> PillowCodec:
        """The codec settings alone (picklable: a registered class, not this entry model)."""
        assert isinstance(self, PillowCodec)
        return CLASSICAL[self.family](**self.model_dump(exclude={"series"}))


def _classical_entry(codec: type[PillowCodec]) -> type[PillowCodec]:
    return create_model(
        f"{codec.__name__}Entry",
        __base__=(codec, _ClassicalSeries),
        series=(str | None, SeriesField),
    )


CLASSICAL_ENTRIES = {family: _classical_entry(cls) for family, cls in CLASSICAL.items()}
FAMILIES = ("learned", *CLASSICAL_ENTRIES)

CodecEntry = Annotated[
    reduce(or_, (LearnedEntry, *CLASSICAL_ENTRIES.values())),
    Field(discriminator="family"),
]
"""A codec entry; `family` selects its kind and the settings it takes."""


def is_learned(entry: Any) -> bool:
    return isinstance(entry, LearnedEntry)
