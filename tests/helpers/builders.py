"""Small builders of what stages make: prepared splits, mask stores, codecs, training runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from icmflow.codecs.architectures import create_model
from icmflow.codecs.checkpoint import read_checkpoint, save_checkpoint, save_untrained
from icmflow.core.errors import ProblemLog
from icmflow.datasets.coco import prepare_coco
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.masks.build import build_object_masks
from icmflow.masks.store import MaskStore
from icmflow.training.data import TrainingCrops
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.trainer import TrainResult, TrainSettings, train_codec
from icmflow.vision.tasks.base import TaskModelSpec


def save_codec(model, path: Path, model_args: dict, arch: str = "bmshj2018-hyperprior") -> Path:
    """Save a (tiny) codec as the train stage does, without optimiser history."""
    save_untrained(path, model, arch=arch, model_args=model_args)
    saved = read_checkpoint(path)
    assert (
        saved["icmflow"]["arch"] == arch and saved["state_dict"].keys() == model.state_dict().keys()
    )
    return path


def save_trained(
    result: TrainResult,
    path: Path,
    model_args: dict,
    *,
    step: int,
    extra: dict | None = None,
    arch: str = "bmshj2018-hyperprior",
) -> Path:
    """Save a training result's model (updated first) after `step` steps, as the train stage
    does."""
    model = result.model.cpu()
    model.update(force=True)
    save_checkpoint(
        path,
        model,
        arch=arch,
        model_args=model_args,
        step=step,
        loss=result.last["loss"],
        optimizer=result.optimizer,
        aux_optimizer=result.aux_optimizer,
        extra=extra or {},
    )
    assert read_checkpoint(path)["state_dict"].keys() == model.state_dict().keys()
    return path


def random_task_weights(spec: TaskModelSpec) -> TaskModelSpec:
    """Write a randomly initialised torchvision model of `spec` to `spec.weights` (seed 0)."""
    from icmflow.vision.tasks.torchvision_backend import build, read_state

    torch.manual_seed(0)
    torch.save(build(spec).state_dict(), spec.weights)
    assert read_state(Path(spec.weights)).keys() == build(spec).state_dict().keys()
    return spec


def build(dataset: dict, out, *, client=None, crowd=True, per_shard=2, source="val.json"):
    """The object mask store of `dataset` at `out`; it lists every image of the dataset."""
    store = build_object_masks(
        dataset,
        out,
        work=out.with_name(out.name + ".work"),
        source=source,
        include_crowd=crowd,
        images_per_shard=per_shard,
        client=client,
    )
    assert MaskStore(store).image_ids == [image["id"] for image in dataset["images"]], store
    return store


def prepare_split(tmp: Path, annotations: Path, images: Path, name: str) -> PreparedDataset:
    prepared = prepare_coco(annotations, images, ProblemLog("raise"), workers=2)
    path = tmp / f"{name}.json"
    write_prepared(path, prepared, image_root=images, final_dir=tmp)
    loaded = PreparedDataset.load(path)
    assert loaded.images == prepared["images"] and loaded.image_root == images.resolve()
    return loaded


def tiny_training(
    dataset: PreparedDataset,
    masks: Path | None,
    tmp_path: Path,
    *,
    state_path: Path | None = None,
    **overrides,
) -> TrainResult:
    """A few steps of a tiny hyperprior: `object` objective with a mask store, else `mse`."""
    settings = dict(steps=4, batch_size=2, lr=1e-3, aux_lr=1e-3, save_every=500)
    settings.update(overrides)
    objective = OBJECTIVES["object" if masks is not None else "mse"](lmbda=0.05)
    result = train_codec(
        create_model("bmshj2018-hyperprior", seed=0, N=8, M=8),
        objective,
        TrainingCrops(dataset, {"object": masks} if masks is not None else {}, 64),
        TrainSettings(**settings),
        log_path=tmp_path / "log.csv",
        state_path=state_path,
    )
    assert math.isfinite(result.last["loss"]), result.last
    return result


def box_union(coco: COCO, image_id: int, include_crowd: bool) -> np.ndarray:
    """The union of an image's boxes (pixel centres inside), and of its crowd regions."""
    info = coco.imgs[image_id]
    union = np.zeros((info["height"], info["width"]), dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        if ann["iscrowd"]:
            if include_crowd:
                union |= coco.annToMask(ann).astype(bool)
            continue
        x, y, w, h = ann["bbox"]
        ys, xs = np.arange(info["height"]) + 0.5, np.arange(info["width"]) + 0.5
        union |= ((ys >= y) & (ys < y + h))[:, None] & ((xs >= x) & (xs < x + w))[None, :]
    assert union.shape == (info["height"], info["width"])
    return union
