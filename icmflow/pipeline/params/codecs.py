"""Codec entries: `codecs.<name>` of params.yaml, each with a `family`.

- `family: learned`: a CompressAI architecture (`arch`, `model_args`) trained with a registered
  objective (`objective`, `lmbda`, `objective_args`); `train` overrides the shared training
  settings for this codec only. Gets train@, encode@ and evaluate@ stages.
- `family: compressed-domain`: compressed-domain analysis (paper 004,
  `icmflow.codecs.compressed_domain`): a learned entry (arch `bmshj2018-hyperprior` or
  `mbt2018-mean`) trained with objective `compressed-domain`, whose `objective_args.task` (a
  torchvision DeepLabV3 or Faster R-CNN task) gets a task branch on the latent. Its coded
  dataset holds the human images as a learned codec's does, and machine bitstreams (the gate's
  channels) beside them; infer@ of its own task predicts from those, at their rate.
  With `primary: <a compressed-domain entry>` instead of `arch`, `lmbda`, ...: a secondary task
  of that codec (eq. 6): only the branch of its `objective_args.task` is trained, on the
  primary's latent, the primary's codec and branch frozen (train@ after the primary's); its
  checkpoint holds the primary's codec unchanged and its own branch, so its human images are
  the primary's and its machine bitstreams are ẑ and the channels its own gate keeps.
- a classical family (`jpeg`, `webp`, `avif`, `heif`: `icmflow.coding.classical.CLASSICAL`) with
  its own settings (`quality`, ...). Gets encode@ and evaluate@.
- `family: scalable`: scalable coding for humans and machines (`icmflow.codecs.scalable`): the
  learned, channel-sliced codec entry `machine` frozen as the machine layer, and a human layer
  trained with objective `scalable` at its own `lmbda`: `mode: fusion` (the additional-
  information codec, a TCM with `m` slices whose latent fuses with the machine's; its
  `model_args` are TCM's but M and num_slices, which follow from the machine and m) or
  `mode: dc` (the DC model: codec `arch` with `model_args` on the residual image). Gets
  train@ (after the machine's), encode@ (the additional layer) and evaluate@.
- `family: roi`: Ahonen et al.'s ROI-based bit allocation (`icmflow.coding.roi`) on the trained
  learned entry `codec`: its latent outside each image's ground-truth object mask divided by
  `qf`. Gets encode@ (on `codec`'s checkpoint and the object masks) and evaluate@, no train@.

Architectures and objectives are checked against their registries by `registered`, which
imports PyTorch and CompressAI, so that the stages that need neither start in a second.

`init` says where a learned codec's weights start (`InitSource`): another codec entry's
checkpoint, a CompressAI-layout file, or a CompressAI zoo file in the torch hub cache; the
checks that need no PyTorch are `init_problems`, those against tensors `registered`'s.

`series` names the RD curve a codec is a point of (default: `<arch>-<objective>` for learned
codecs, the family for classical ones); BD-rates compare series.
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, create_model, model_validator

from icmflow.coding.classical import CLASSICAL, PillowCodec
from icmflow.pipeline.params.sections import NAME_PATTERN, Section, TrainOverrides

SeriesField = Field(None, pattern=NAME_PATTERN, description="the RD curve this codec is on")


class InitFile(Section):
    """Initial weights from a CompressAI-layout checkpoint or state dict (a DVC dependency)."""

    file: str = Field(min_length=1, description="path, relative to the project root")


class InitZoo(Section):
    """Initial weights from CompressAI's zoo, a file already in the torch hub cache."""

    zoo: str = Field(description="a compressai.zoo architecture, e.g. cheng2020-attn")
    quality: int = Field(gt=0)
    metric: Literal["mse", "ms-ssim"] = "mse"


INIT_FORMS = ("entry", "file", "zoo")
"""The forms of `init` (the tags of `InitSource`)."""


def _init_form(value: Any) -> str:
    if isinstance(value, dict):
        return "file" if "file" in value else "zoo"
    return "entry" if isinstance(value, str) else "file"


InitSource = Annotated[
    Annotated[str, Field(pattern=NAME_PATTERN), Tag("entry")]
    | Annotated[InitFile, Tag("file")]
    | Annotated[InitZoo, Tag("zoo")],
    Discriminator(_init_form),
]
"""`init:` of a learned entry: a codec entry's name, `{file: path}` or `{zoo: arch, quality}`."""


class LearnedEntry(Section):
    family: Literal["learned"]
    arch: str = Field(description="a name in compressai.registry.MODELS")
    model_args: dict[str, Any] = Field(default_factory=dict)
    objective: str = Field(description="a registered training objective")
    lmbda: float = Field(gt=0, description="λ on CompressAI's scale: R + λ·255²·D")
    objective_args: dict[str, Any] = Field(default_factory=dict)
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    init: InitSource | None = Field(None, description="where training starts: entry, file, zoo")
    series: str | None = SeriesField

    @property
    def series_name(self) -> str:
        return self.series or f"{self.arch}-{self.objective}"

    @property
    def init_entry(self) -> str | None:
        """The codec entry whose checkpoint this one starts from (None: none)."""
        return self.init if isinstance(self.init, str) else None

    @property
    def setting(self) -> str:
        """What places this codec on its series' curve."""
        return f"λ={self.lmbda:g}"


class CompressedDomainEntry(LearnedEntry):
    family: Literal["compressed-domain"]  # type: ignore[assignment]
    objective: Literal["compressed-domain"] = "compressed-domain"  # type: ignore[assignment]

    @model_validator(mode="after")
    def _names_its_task(self) -> CompressedDomainEntry:
        if "task" not in self.objective_args:
            raise ValueError(
                "objective_args.task is required: the tasks entry whose network gets the "
                "branch on the latent (a torchvision DeepLabV3 or Faster R-CNN)"
            )
        return self

    @property
    def machine_task(self) -> str:
        """The task its machine bitstreams are for."""
        return str(self.objective_args["task"])


class SecondaryEntry(Section):
    """A secondary task of compressed-domain codec `primary` (paper 004, eq. 6): the branch of
    `objective_args.task` (gate, transform, tail) trained alone on the primary's latent."""

    family: Literal["compressed-domain"]
    primary: str = Field(
        pattern=NAME_PATTERN,
        description="the compressed-domain codec entry whose codec (and branch) stay frozen",
    )
    objective_args: dict[str, Any] = Field(default_factory=dict)
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    series: str | None = SeriesField

    objective: ClassVar[str] = "compressed-domain-secondary"

    @model_validator(mode="after")
    def _names_its_task(self) -> SecondaryEntry:
        if "task" not in self.objective_args:
            raise ValueError(
                "objective_args.task is required: the tasks entry whose branch is trained on "
                "the primary codec's latent (a torchvision DeepLabV3 or Faster R-CNN)"
            )
        return self

    @property
    def machine_task(self) -> str:
        """The task its machine bitstreams are for."""
        return str(self.objective_args["task"])

    @property
    def series_name(self) -> str:
        return self.series or f"secondary-{self.machine_task}"

    @property
    def setting(self) -> str:
        return f"primary {self.primary}"


SECONDARY_TAGS = ("primary-task", "secondary-task")
"""The tags of the two kinds of `family: compressed-domain` entries (no keys of params.yaml)."""


def _compressed_domain_kind(entry: Any) -> str:
    primary = entry.get("primary") if isinstance(entry, dict) else getattr(entry, "primary", None)
    return SECONDARY_TAGS[primary is not None]


CompressedDomainKind = Annotated[
    Union[  # noqa: UP007 (tagged members: the | operator does not take them)
        Annotated[CompressedDomainEntry, Tag(SECONDARY_TAGS[0])],
        Annotated[SecondaryEntry, Tag(SECONDARY_TAGS[1])],
    ],
    Discriminator(_compressed_domain_kind),
]
"""A `family: compressed-domain` entry: with `primary`, a secondary task's."""


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


class ScalableEntry(Section):
    family: Literal["scalable"]
    machine: str = Field(
        pattern=NAME_PATTERN, description="a learned, channel-sliced codec entry (e.g. tcm)"
    )
    mode: Literal["fusion", "dc"] = "fusion"
    m: int | None = Field(None, gt=0, description="fusion: slices of ŷ the human layer adds to")
    arch: str | None = Field(None, description="dc: the residual codec's architecture")
    model_args: dict[str, Any] = Field(default_factory=dict)
    lmbda: float = Field(gt=0, description="λ of the human layer: R(ya) + R(za) + λ·255²·MSE")
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    series: str | None = SeriesField

    objective: ClassVar[str] = "scalable"

    @model_validator(mode="after")
    def _mode_settings(self) -> ScalableEntry:
        if self.mode == "fusion" and (self.m is None or self.arch is not None):
            raise ValueError(
                "mode fusion needs m (1 to the machine's num_slices) and no arch: its human "
                "layer is the additional-information codec"
            )
        if self.mode == "dc" and (self.arch is None or self.m is not None):
            raise ValueError("mode dc needs arch (the residual codec) and no m")
        return self

    @property
    def series_name(self) -> str:
        m = f"-m{self.m}" if self.mode == "fusion" else ""
        return self.series or f"{self.machine}-{self.mode}{m}"

    @property
    def setting(self) -> str:
        return f"λ={self.lmbda:g}"


class RoiEntry(Section):
    family: Literal["roi"]
    codec: str = Field(pattern=NAME_PATTERN, description="the trained learned codec entry")
    qf: float = Field(1.4, ge=1, description="the latent outside the ROI is divided by it")
    series: str | None = SeriesField

    @property
    def series_name(self) -> str:
        return self.series or f"roi-qf{self.qf:g}"

    @property
    def setting(self) -> str:
        return f"on {self.codec}"


def scalable_problems(codecs: dict[str, Any]) -> list[tuple[str, str]]:
    """Scalable entries whose machine is no learned codec entry (the registries' checks of
    channel slices and m are `registered`'s)."""
    problems = []
    for name, entry in codecs.items():
        if not is_scalable(entry):
            continue
        machine = codecs.get(entry.machine)
        if not is_learned(machine):
            found = "not under codecs" if machine is None else f"a {machine.family} codec"
            problems.append(
                (
                    f"codecs.{name}.machine",
                    f"{entry.machine!r} is {found}: the machine layer is a learned, "
                    "channel-sliced codec entry (e.g. arch tcm)",
                )
            )
    return problems


def roi_problems(codecs: dict[str, Any]) -> list[tuple[str, str]]:
    """ROI entries whose `codec` is no learned codec entry."""
    problems = []
    for name, entry in codecs.items():
        if is_roi(entry) and not is_learned(wrapped := codecs.get(entry.codec)):
            found = "not under codecs" if wrapped is None else f"a {wrapped.family} codec"
            problems.append(
                (
                    f"codecs.{name}.codec",
                    f"{entry.codec!r} is {found}: the ROI baseline codes with a trained, "
                    "learned codec entry",
                )
            )
    return problems


def secondary_problems(codecs: dict[str, Any]) -> list[tuple[str, str]]:
    """Secondary tasks whose primary is no primary compressed-domain codec entry."""
    problems = []
    for name, entry in codecs.items():
        if not is_secondary(entry):
            continue
        primary = codecs.get(entry.primary)
        if not isinstance(primary, CompressedDomainEntry):
            found = "not under codecs" if primary is None else f"a {primary.family} codec"
            if is_secondary(primary):
                found = "a secondary task's codec"
            problems.append(
                (
                    f"codecs.{name}.primary",
                    f"{entry.primary!r} is {found}: a secondary task reads the latent of a "
                    "compressed-domain codec trained with its primary task (family "
                    "compressed-domain, with arch and lmbda)",
                )
            )
    return problems


def init_problems(codecs: dict[str, Any]) -> list[tuple[str, str]]:
    """Learned entries whose `init` names no learned entry, itself, a cycle, or weights of
    another architecture (the checks of tensor shapes are `registered`'s)."""
    problems = []
    for name, entry in codecs.items():
        if not is_learned(entry) or entry.init is None:
            continue
        key, base_name = f"codecs.{name}.init", entry.init_entry
        if isinstance(entry.init, InitZoo) and entry.init.zoo != entry.arch:
            problems.append(
                (
                    key,
                    f"zoo weights of {entry.init.zoo!r} do not fit codecs.{name} "
                    f"(arch {entry.arch!r}): set arch {entry.init.zoo}, or another zoo model",
                )
            )
        if base_name is None:
            continue
        base = codecs.get(base_name)
        if not is_learned(base):
            found = "not under codecs" if base is None else f"a {base.family} codec"
            problems.append((key, f"{base_name!r} is {found}: init names a learned codec entry"))
        elif base.arch != entry.arch:
            problems.append(
                (
                    key,
                    f"codecs.{name} (arch {entry.arch!r}) cannot start from codecs.{base_name} "
                    f"(arch {base.arch!r}): init needs the same architecture",
                )
            )
        elif name in (chain := init_chain(codecs, base_name)):
            problems.append((key, f"init cycle: {' -> '.join([name, *chain])}"))
    return problems


def init_chain(codecs: dict[str, Any], name: str) -> list[str]:
    """`name` and the entries its weights start from, in order, up to a repeated one."""
    chain: list[str] = []
    while name in codecs and name not in chain:
        chain.append(name)
        entry = codecs[name]
        if not is_learned(entry) or entry.init_entry is None:
            break
        name = entry.init_entry
    return chain


def _classical_entry(codec: type[PillowCodec]) -> type[PillowCodec]:
    return create_model(
        f"{codec.__name__}Entry",
        __base__=(codec, _ClassicalSeries),
        series=(str | None, SeriesField),
    )


CLASSICAL_ENTRIES = {family: _classical_entry(cls) for family, cls in CLASSICAL.items()}
FAMILIES = ("learned", "compressed-domain", "scalable", "roi", *CLASSICAL_ENTRIES)

CodecEntry = Annotated[
    reduce(
        or_,
        (
            LearnedEntry,
            CompressedDomainKind,
            ScalableEntry,
            RoiEntry,
            *CLASSICAL_ENTRIES.values(),
        ),
    ),
    Field(discriminator="family"),
]
"""A codec entry; `family` selects its kind and the settings it takes."""


def is_learned(entry: Any) -> bool:
    return isinstance(entry, LearnedEntry)


def is_compressed_domain(entry: Any) -> bool:
    """A compressed-domain codec: a primary task's, or a secondary task's."""
    return isinstance(entry, CompressedDomainEntry | SecondaryEntry)


def is_secondary(entry: Any) -> bool:
    return isinstance(entry, SecondaryEntry)


def is_scalable(entry: Any) -> bool:
    return isinstance(entry, ScalableEntry)


def is_roi(entry: Any) -> bool:
    return isinstance(entry, RoiEntry)


def is_trained(entry: Any) -> bool:
    """Entries with a train@ stage."""
    return is_learned(entry) or is_scalable(entry) or is_secondary(entry)
