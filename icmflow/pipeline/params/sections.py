"""The plain-settings sections of params.yaml, one model each (a misspelt key is an error)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from icmflow.core.storage import check_url, is_url

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
"""Names of datasets and codecs: DVC stage keys and params paths, which split on dots."""


class Section(BaseModel):
    """A part of params.yaml: unknown keys are errors, and so are infinite and NaN numbers
    (`.inf` passes `gt=0`, and training on it runs every step on NaN)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SampleParams(Section):
    train_images: int = Field(24, gt=0)
    val_images: int = Field(8, gt=0)
    seed: int = 0


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
    """Training settings shared by every learned codec; a codec entry's `train` overrides them."""

    dataset: str = "sample"
    split: str = "train"
    patch_size: int = Field(
        128, gt=0, multiple_of=64, description="crop side; the models downsample by 2^6"
    )
    batch_size: int = Field(8, gt=0)
    steps: int = Field(400, gt=0)
    lr: float = Field(1e-4, gt=0)
    aux_lr: float = Field(1e-3, gt=0)
    clip_max_norm: float = Field(1.0, ge=0)
    lr_milestones: list[int] = Field(default_factory=list)
    seed: int = Field(0, description="initial weights and crop order")
    num_workers: int = Field(0, ge=0)
    cache_images: bool | Literal["auto"] = Field(
        "auto", description="keep decoded images and masks in memory; auto: if they fit in 2 GiB"
    )
    device: str = "auto"
    channels_last: bool = Field(False, description="NHWC memory layout (faster convolutions)")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="bfloat16: the codec's transforms under autocast, likelihoods float32",
    )
    nproc: int = Field(
        1,
        gt=0,
        description="processes training together under torchrun (one per GPU); "
        "batch_size is the global batch, split over them",
    )
    save_every: int = Field(500, gt=0)


def _optional_fields(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s fields, each optional (None: not overridden) with its constraints kept."""
    return {
        name: (
            (Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)
            | None,
            Field(None, description=info.description),
        )
        for name, info in model.model_fields.items()
    }


TrainOverrides = create_model(
    "TrainOverrides",
    __base__=Section,
    __doc__="Any of `train`'s settings, for one codec only.",
    **_optional_fields(TrainParams),
)


class EncodeParams(Section):
    dataset: str = "sample"
    split: str = Field("val", description="the split every codec is evaluated on")
    train_split: str | None = Field(
        None, description="coded too by the codecs task models are fine-tuned on (tasks.*.finetune)"
    )
    device: str = "cpu"
    scheduler: str | None = Field(None, description="dask scheduler address; null: LocalCluster")
    n_workers: int = Field(2, gt=0)
    images_per_task: int = Field(8, gt=0)


class StorageParams(Section):
    """Where `masks`, `edges` and `encode` build their stores: one place every dask worker,
    on every machine, writes to. The finished stores are then copied into the project (the
    DVC outputs, which downstream stages read)."""

    root: str | None = Field(
        None,
        description="fsspec URL (s3://bucket/prefix, gs://…, file:///shared/folder); "
        "null: this project's data/.work",
    )

    @field_validator("root")
    @classmethod
    def _url(cls, root: str | None) -> str | None:
        if root is not None and not is_url(root):
            raise ValueError(
                f"{root}: not a URL; write a shared folder as file:///absolute/path, a bucket "
                "as s3://bucket/prefix (or null to build inside the project)"
            )
        return root if root is None else check_url(root)


class BitMapsParams(Section):
    """Bit-allocation maps (stage `bitmaps@<first>-vs-<second>`): pairs of learned codecs."""

    pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="[first, second] learned codecs compared per image"
    )
    images: int = Field(4, gt=0, description="maps for the first images of encode.split")


class ReportParams(Section):
    anchors: list[str] = Field(
        min_length=1, description="series every other series gets a BD-rate against"
    )
    bd_method: Literal["akima", "pchip", "cubic"] = "akima"
