"""Shared fixtures: the sample dataset, prepared and masked once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from icmflow.datasets.sample import write_sample
from icmflow.masks.build import build_object_masks
from icmflow.masks.store import MaskStore
from tests.helpers.builders import prepare_split
from tests.helpers.codecs import tiny_codec


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
    return tiny_codec()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files holding `slow` tests first (stable order): with `make test`'s two workers the
    long files start at once and the short ones fill in beside them."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
