"""Shared fixtures: the sample dataset, prepared and masked once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from icmflow.coding.checkpoint import save_checkpoint
from icmflow.coding.registry import create_model
from icmflow.datasets.coco import prepare_coco
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.datasets.sample import write_sample
from icmflow.errors import ProblemLog
from icmflow.masks.build import build_object_masks
from icmflow.masks.store import MaskStore

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("ICMFLOW_SAMPLES", REPO.parent / "shared" / "samples"))


def real_sample(name: str) -> Path:
    """A folder of ../shared/samples (or $ICMFLOW_SAMPLES); the test is skipped without it."""
    path = SAMPLES / name
    if not path.is_dir():
        pytest.skip(f"real sample {name} not found under {SAMPLES}")
    return path


def save_codec(model, path: Path, model_args: dict) -> Path:
    """Save a (tiny) bmshj2018-hyperprior as the train stage does, without optimiser history."""
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(
        path,
        model,
        arch="bmshj2018-hyperprior",
        model_args=model_args,
        step=0,
        loss=0.0,
        optimizer=optimizer,
        aux_optimizer=optimizer,
        extra={},
    )
    return path


def build(dataset: dict, out, *, client=None, crowd=True, per_shard=2, source="val.json"):
    return build_object_masks(
        dataset,
        out,
        work=out.with_name(out.name + ".work"),
        source=source,
        include_crowd=crowd,
        images_per_shard=per_shard,
        client=client,
    )


def prepare_split(tmp: Path, annotations: Path, images: Path, name: str) -> PreparedDataset:
    prepared = prepare_coco(annotations, images, ProblemLog("raise"), workers=2)
    path = tmp / f"{name}.json"
    write_prepared(path, prepared, image_root=images, final_dir=tmp)
    return PreparedDataset.load(path)


@pytest.fixture(scope="session")
def sample_layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample in every layout: coco/, visdrone/, cityscapes/, yolo/."""
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, train_images=10, val_images=5, seed=0)
    return root


@pytest.fixture(scope="session")
def sample_root(sample_layouts: Path) -> Path:
    return sample_layouts / "coco"


@pytest.fixture(scope="session")
def sample_prepared(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("prepared")
    prepared = {
        split: prepare_split(
            out, sample_root / "annotations" / f"instances_{split}.json", sample_root / split, split
        )
        for split in ("train", "val")
    }
    for split, dataset in prepared.items():  # else tests over its images would pass vacuously
        counts = {len(dataset.images), len(dataset.data["annotations"])}
        assert 0 not in counts, f"the sample's {split} split has no images or no objects"
    return prepared


@pytest.fixture(scope="session")
def sample_masks(sample_prepared: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("masks")
    stores = {}
    for split, dataset in sample_prepared.items():
        stores[split] = build_object_masks(
            dataset.data,
            out / f"{split}.zarr",
            work=out / f"work-{split}",
            source=str(dataset.path),
            include_crowd=True,
            images_per_shard=4,
            client=None,
        )
        ids = MaskStore(stores[split]).image_ids
        assert ids == [image["id"] for image in dataset.images], f"{split} store misses images"
    return stores


@pytest.fixture(scope="module")
def codec():
    """An untrained codec, ready to code (its CDF tables built)."""
    torch.manual_seed(0)
    model = create_model("bmshj2018-hyperprior", N=16, M=16).eval()
    model.update(force=True)
    return model
