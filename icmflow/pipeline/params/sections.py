"""The plain-settings sections of params.yaml, one model each (a misspelt key is an error)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
    field_validator,
    model_validator,
)

from icmflow.core.storage import check_url, is_url

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
"""Names of datasets, splits and codecs: DVC stage keys, params paths (which split on dots) and
file names (no separator, no `..`)."""
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


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
    """SAM edge masks (SA-ICM) for the datasets listed: how edges are drawn, and SAM's
    automatic mask generator settings (`alpha` is its `pred_iou_thresh`)."""

    datasets: list[str] = Field(default_factory=list)
    method: Literal["canny", "boundary"] = Field(
        "canny",
        description="canny: SA-ICM's Canny edges of SAM's segmentation map; boundary: the "
        "union of each mask's boundary",
    )
    alpha: float = Field(
        0.88,
        ge=0,
        le=1,
        description="SA-ICM's confidence α: the masks SAM predicts an IoU above it for are kept "
        "(SAM's pred_iou_thresh)",
    )
    points_per_side: int = Field(32, gt=0)
    points_per_batch: int = Field(64, gt=0)
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    box_nms_thresh: float = Field(0.7, ge=0, le=1)
    min_region_area: int = Field(0, ge=0)
    edge_width: int = Field(1, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pred_iou_thresh" in data:
            raise ValueError(
                "pred_iou_thresh is now alpha (SA-ICM's confidence α, which is SAM's "
                "pred_iou_thresh): rename the key"
            )
        return data


class TrainParams(Section):
    """Training settings shared by every learned codec; a codec entry's `train` overrides them.

    The defaults are a real-data recipe (what a codec gets unless params.yaml says otherwise):
    CompressAI's `examples/train.py` (Adam at lr 1e-4, aux lr 1e-3, batch 16, 256×256 crops,
    gradients clipped at norm 1) and the papers' scale (paper 003: 80 epochs of COCO at batch
    16, about 590k steps, lr 1e-4 decayed at the end; paper 004: lr 1e-4, tenfold drops at 70 %
    and 90 %), with the lr dropped tenfold at 90 % of the steps. `icmflow params --resolved`
    prints them all; the demo's params.yaml sets its own, smoke-scale values.
    """

    dataset: str = Field("sample", description="a key of datasets")
    split: str = Field("train", description="a split of that dataset")
    patch_size: int = Field(
        256, gt=0, multiple_of=64, description="crop side; the models downsample by 2^6"
    )
    batch_size: int = Field(16, gt=0, description="crops per step (all processes together)")
    steps: int = Field(
        500_000, gt=0, description="optimiser steps (the papers' scale: days on one GPU)"
    )
    lr: float = Field(1e-4, gt=0, description="Adam's learning rate of the codec")
    aux_lr: float = Field(
        1e-3, gt=0, description="Adam's learning rate of the entropy bottlenecks' quantiles"
    )
    clip_max_norm: float = Field(1.0, ge=0, description="gradient clipping (0: none)")
    lr_milestones: list[int] = Field(
        default_factory=lambda: [450_000],
        description="steps at which lr drops tenfold (absolute: move them with steps)",
    )
    lr_schedule: Literal["multistep", "poly"] = Field(
        "multistep",
        description="multistep: tenfold drops after lr_milestones; poly: polynomial decay over "
        "the steps after lr_poly_start (the auxiliary-loss paper's)",
    )
    lr_poly_power: float = Field(0.9, gt=0, description="poly: the decay's power")
    lr_poly_start: float = Field(
        0.5, ge=0, lt=1, description="poly: fraction of the steps before the decay starts"
    )
    seed: int = Field(0, description="initial weights and crop order")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (GPUs: 4 or more)")
    cache_images: bool | Literal["auto"] = Field(
        "auto", description="keep decoded images and masks in memory; auto: if they fit in 2 GiB"
    )
    device: str = Field("auto", description="auto: cuda when available, else cpu")
    channels_last: bool = Field(
        True, description="NHWC memory layout: faster convolutions (oneDNN on CPUs, cuDNN)"
    )
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
    save_every: int = Field(500, gt=0, description="steps between resumable training states")


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


class ResizeParams(Section):
    """The evaluation resize (the auxiliary-loss paper's: shorter edge 800, padded to a multiple
    of 64): the images every codec codes, and the originals they are measured against, resized
    once (stage `resize@<dataset>`); annotations scaled, object masks made of the resized
    images."""

    shorter_edge: int = Field(gt=0, description="pixels of each image's shorter side")
    pad_multiple: int = Field(
        1,
        gt=0,
        description="every codec codes the image padded bottom/right (edge pixels repeated) to "
        "a multiple of this; decoded images are cropped back, bpp counts the unpadded pixels",
    )


class CodedDatasetParams(Section):
    """A dataset coded and evaluated besides `encode.dataset` (an entry of `encode.datasets`,
    keyed by its name under `datasets`): every codec (or those listed) codes it, it gets its
    own RD table, plots and BD-rates."""

    split: str | None = Field(None, description="the split coded; null: the dataset's only split")
    resize: ResizeParams | None = None
    codecs: list[str] | None = Field(None, description="the codecs that code it; null: all")


class EncodeParams(Section):
    dataset: str = "sample"
    split: str = Field("val", description="the split every codec is evaluated on")
    train_split: str | None = Field(
        None, description="coded too by the codecs task models are fine-tuned on (tasks.*.finetune)"
    )
    resize: ResizeParams | None = Field(
        None, description="resize the coded dataset's images first (null: as they are)"
    )
    datasets: dict[Name, CodedDatasetParams] = Field(
        default_factory=dict,
        description="more datasets every codec codes, each evaluated and reported on its own",
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
