"""`params.yaml`, the single source of truth: its schema, validated once with clear messages.

Every section is strict (a misspelt key is an error, not a silently ignored setting). Codecs are
named `<loss>-<λ>` (e.g. `object-0.05`): the name is the DVC matrix entry, the model folder and the
row of the RD table, so changing one λ creates exactly one new codec and leaves the others alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from icmflow.training import MASK_OF_LOSS

CODEC_NAME = re.compile(r"^(?P<loss>[a-z]+)-(?P<lmbda>\d+(\.\d+)?([eE]-?\d+)?)$")


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says where and how to fix it."""


@dataclass(frozen=True)
class Codec:
    name: str
    loss: str
    lmbda: float


def parse_codec(name: str) -> Codec:
    match = CODEC_NAME.match(name)
    if not match:
        raise ValueError(f"codec {name!r} must look like <loss>-<lambda>, e.g. object-0.05")
    loss, lmbda = match["loss"], float(match["lmbda"])
    if loss not in MASK_OF_LOSS:
        raise ValueError(f"codec {name!r}: unknown loss {loss!r}; known: {', '.join(MASK_OF_LOSS)}")
    if lmbda <= 0:
        raise ValueError(f"codec {name!r}: lambda must be positive")
    return Codec(name, loss, lmbda)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleParams(Section):
    train_images: int = Field(24, gt=0)
    val_images: int = Field(8, gt=0)
    seed: int = 0


class SplitParams(Section):
    annotations: str = Field(
        description="relative to the dataset root: the COCO instances JSON (coco), or the "
        "folder of annotations/ (visdrone), labels/<split> (yolo), gtFine/<split> (cityscapes)"
    )
    images: str = Field(description="image folder, relative to the dataset root")


class DatasetBase(Section):
    root: str = Field(description="folder holding the dataset; DVC tracks it as a dependency")
    splits: dict[str, SplitParams]

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """(annotations file or folder, image folder) of `split`."""
        root = Path(self.root)
        entry = self.splits[split]
        return root / entry.annotations, root / entry.images

    def reader_options(self) -> dict[str, Any]:
        """The format's own reader arguments."""
        return {}


class CocoDataset(DatasetBase):
    format: Literal["coco"] = "coco"


class WithIgnoredRegions(DatasetBase):
    ignored_regions: Literal["crowd", "drop"] = Field(
        "crowd",
        description="regions neither object nor background (README, Datasets): kept as crowd "
        "annotations (masks.crowd decides their pixels) or dropped",
    )

    def reader_options(self) -> dict[str, Any]:
        return {"ignored_regions": self.ignored_regions}


class VisDroneDataset(WithIgnoredRegions):
    format: Literal["visdrone"]


class CityscapesDataset(WithIgnoredRegions):
    format: Literal["cityscapes"]


class YoloDataset(DatasetBase):
    format: Literal["yolo"]
    dataset_yaml: str = Field(description="ultralytics dataset YAML with `names`, from the root")

    def reader_options(self) -> dict[str, Any]:
        return {"dataset_yaml": Path(self.root) / self.dataset_yaml}


DATASET_FORMATS = ("coco", "visdrone", "cityscapes", "yolo")


def _format_of(dataset: Any) -> str | None:
    if isinstance(dataset, dict):
        return dataset.get("format", "coco")
    return getattr(dataset, "format", None)


DatasetParams = Annotated[
    Annotated[CocoDataset, Tag("coco")]
    | Annotated[VisDroneDataset, Tag("visdrone")]
    | Annotated[CityscapesDataset, Tag("cityscapes")]
    | Annotated[YoloDataset, Tag("yolo")],
    Discriminator(
        _format_of,
        custom_error_type="dataset_format",
        custom_error_message=f"format must be one of {', '.join(DATASET_FORMATS)}",
    ),
]
"""A dataset entry; `format` (default coco) selects the reader and the options it takes."""


class PrepareParams(Section):
    on_error: Literal["raise", "skip"] = "raise"
    decode_images: bool = True
    workers: int = Field(4, gt=0)


class MasksParams(Section):
    crowd: Literal["include", "exclude"] = "include"
    source: Literal["annotations", "sam-boxes"] = Field(
        "annotations", description="sam-boxes: SAM's mask for every box (needs sam.checkpoint)"
    )
    boxes_per_batch: int = Field(64, gt=0, description="box prompts SAM decodes at once")
    images_per_shard: int = Field(64, gt=0)
    scheduler: str | None = Field(None, description="dask scheduler address; null: LocalCluster")
    n_workers: int = Field(2, gt=0)
    threads_per_worker: int = Field(1, gt=0)


class SamParams(Section):
    """The Segment Anything model of `edges` and of `masks.source: sam-boxes`."""

    model_type: Literal["vit_b", "vit_l", "vit_h"] = "vit_b"
    checkpoint: str | None = Field(None, description="path of the downloaded SAM checkpoint")
    device: str = Field("auto", description="auto: every GPU (one dask worker each), else CPU")
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    memory_mb: int = Field(512, ge=16, description="full-resolution mask work at once")


class EdgesParams(Section):
    """SAM edge masks (SA-ICM) for the datasets listed; SAM's automatic mask generator settings."""

    datasets: list[str] = Field(default_factory=list)
    points_per_side: int = Field(32, gt=0)
    points_per_batch: int = Field(64, gt=0)
    pred_iou_thresh: float = Field(0.88, ge=0, le=1)
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    box_nms_thresh: float = Field(0.7, ge=0, le=1)
    min_region_area: int = Field(0, ge=0)
    edge_width: int = Field(1, gt=0)


class TrainParams(Section):
    dataset: str = "sample"
    split: str = "train"
    model: str = "bmshj2018-hyperprior"
    model_args: dict[str, Any] = Field(default_factory=lambda: {"N": 48, "M": 64})
    patch_size: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0)
    steps: int = Field(400, gt=0)
    lr: float = Field(1e-4, gt=0)
    aux_lr: float = Field(1e-3, gt=0)
    clip_max_norm: float = Field(1.0, ge=0)
    lr_milestones: list[int] = Field(default_factory=list)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    cache_images: bool = False
    device: str = "auto"
    save_every: int = Field(500, gt=0)


class EncodeParams(Section):
    dataset: str = "sample"
    split: str = "val"
    device: str = "cpu"
    scheduler: str | None = Field(None, description="dask scheduler address; null: LocalCluster")
    n_workers: int = Field(2, gt=0)
    images_per_task: int = Field(8, gt=0)


class ReportParams(Section):
    anchor: str = "mse"
    bd_method: Literal["akima", "pchip", "cubic"] = "akima"


class Params(Section):
    sample: SampleParams = SampleParams()
    datasets: dict[str, DatasetParams]
    prepare: PrepareParams = PrepareParams()
    masks: MasksParams = MasksParams()
    sam: SamParams = SamParams()
    edges: EdgesParams = EdgesParams()
    train: TrainParams = TrainParams()
    codecs: list[str]
    encode: EncodeParams = EncodeParams()
    report: ReportParams = ReportParams()

    @field_validator("codecs")
    @classmethod
    def _valid_codecs(cls, names: list[str]) -> list[str]:
        for name in names:
            parse_codec(name)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"codecs listed twice: {duplicates}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        for section, dataset, split in (
            ("train", self.train.dataset, self.train.split),
            ("encode", self.encode.dataset, self.encode.split),
        ):
            if dataset not in self.datasets:
                raise ValueError(
                    f"{section}.dataset {dataset!r} is not under datasets "
                    f"(defined: {', '.join(self.datasets)})"
                )
            if split not in self.datasets[dataset].splits:
                raise ValueError(
                    f"{section}.split {split!r} is not a split of dataset {dataset!r} "
                    f"(splits: {', '.join(self.datasets[dataset].splits)})"
                )
        losses = {parse_codec(n).loss for n in self.codecs}
        if losses and self.report.anchor not in losses:
            raise ValueError(f"report.anchor {self.report.anchor!r} has no codec in codecs")
        self._check_sam_users(losses)
        return self

    def _check_sam_users(self, losses: set[str]) -> None:
        unknown = [d for d in self.edges.datasets if d not in self.datasets]
        if unknown:
            raise ValueError(
                f"edges.datasets lists {unknown}, not under datasets "
                f"(defined: {', '.join(self.datasets)})"
            )
        if len(set(self.edges.datasets)) != len(self.edges.datasets):
            raise ValueError("edges.datasets lists a dataset twice")
        if "edge" in losses and self.train.dataset not in self.edges.datasets:
            raise ValueError(
                f"edge codecs train on the edge masks of train.dataset {self.train.dataset!r}, "
                f"but edges.datasets does not list it: add it (edges: {{datasets: "
                f"[{self.train.dataset}]}}) and set sam.checkpoint"
            )
        users = [f"edges.datasets {self.edges.datasets}"] if self.edges.datasets else []
        if self.masks.source == "sam-boxes":
            users.append("masks.source sam-boxes")
        if users and self.sam.checkpoint is None:
            from icmflow.masks.sam import CHECKPOINTS_URL, OFFICIAL_CHECKPOINTS  # imports torch

            raise ValueError(
                f"{' and '.join(users)} need Segment Anything, but sam.checkpoint is not set: "
                f"download {OFFICIAL_CHECKPOINTS[self.sam.model_type]} (model type "
                f"{self.sam.model_type}) from {CHECKPOINTS_URL} and set sam.checkpoint to "
                "its path, e.g. models/sam/" + OFFICIAL_CHECKPOINTS[self.sam.model_type]
            )

    def codec(self, name: str) -> Codec:
        if name not in self.codecs:
            raise ParamsError(
                f"codec {name!r} is not in params.yaml codecs ({', '.join(self.codecs)})"
            )
        return parse_codec(name)

    def dataset(self, name: str) -> DatasetParams:
        if name not in self.datasets:
            raise ParamsError(
                f"dataset {name!r} is not in params.yaml datasets ({', '.join(self.datasets)})"
            )
        return self.datasets[name]


def _describe(error: dict) -> str:
    loc = [str(part) for part in error["loc"]]
    suffix = ""
    if len(loc) > 2 and loc[0] == "datasets" and loc[2] in DATASET_FORMATS:
        suffix = f" (a {loc.pop(2)} dataset)"  # the union's tag: say it, not as a key
    where = ".".join(loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (misspelt?)"
    elif error["type"] == "dataset_format":
        message += f" (got {error['input'].get('format')!r})"
    elif "input" in error and error["type"] != "missing":
        message += f" (got {error['input']!r})"
    return f"  {where}{suffix}: {message}"


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
        return Params.model_validate(raw or {})
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ParamsError(f"{path} is invalid:\n" + "\n".join(lines)) from None
