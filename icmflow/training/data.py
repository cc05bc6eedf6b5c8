"""Training samples: random crops of images with the identical crops of their masks, and the
endless stream of (item, seed) pairs that a training process draws them in."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from icmflow.core.errors import MissingInputError
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.store import MaskStore
from icmflow.training.targets import TARGETS, GroundTruth, crop_boxes, mirror_boxes

CACHE_BUDGET = 2 << 30
"""Bytes of decoded images and masks that `cache_images: auto` keeps in memory, per process."""


def fits_in_memory(dataset: PreparedDataset, mask_kinds: int) -> bool:
    """Whether the decoded images (3 bytes a pixel) and masks (1 byte) fit in `CACHE_BUDGET`."""
    pixels = sum(image["width"] * image["height"] for image in dataset.images)
    return pixels * (3 + mask_kinds) <= CACHE_BUDGET


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Mirror-pad the bottom/right of an H×W(×C) array so both sides are at least `size`."""
    pad_h, pad_w = max(size - array.shape[0], 0), max(size - array.shape[1], 0)
    if not (pad_h or pad_w):
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="symmetric")


class StreamSampler(Sampler[tuple[int, int]]):
    """The samples of process `rank` of `world`, as `(index, seed)` pairs, endlessly.

    The stream is successive random permutations of the `size` items (permutation `e` drawn
    from `(seed, e)`), cut into global batches of `batch_size`; process `rank` takes items
    `rank, rank + world, ...` of each, so its DataLoader batches of `batch_size / world` together
    make the global batch (as DistributedSampler splits a dataset, without epochs: training
    counts steps). The `p`-th item of the stream carries its own seed for the item's random
    draws (`Seeded`), so a global batch is the same crops whatever the number of processes and
    of DataLoader workers. `start` skips that many global batches: a resumed run continues the
    stream where the saved state stopped.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
    ):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not a multiple of {world} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world, self.start = rank, world, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start * self.batch_size, self.size)
        while True:
            order = np.random.default_rng((self.seed, epoch)).permutation(self.size)
            for i in range(offset, self.size):
                p = epoch * self.size + i
                if p % self.world == self.rank:
                    yield int(order[i]), self.seed * 2**32 + p
            epoch, offset = epoch + 1, 0


class Seeded(Dataset):
    """`data[index]` for keys `(index, seed)`, its draws from torch's CPU generator seeded by
    `seed` (the caller's generator state is kept)."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return self.data[index]


class TrainingCrops(Dataset):
    """Samples `{"x": 3×P×P image in [0, 1], <kind>: 1×P×P mask, ...}`: one random `patch_size`
    crop of an image and the same crop of its mask of every kind in `masks` (kind -> store);
    with `targets`, the crop's ground truth under `"targets"` too (`icmflow.training.targets`:
    boxes, which `collate` keeps as a list, or a P×P class map).

    Crop positions are drawn from torch's generator. Images smaller than the crop are
    mirror-padded first, image and masks alike.
    With `cache`, every image and mask is decoded once, here (in threads), and stays in memory;
    DataLoader worker processes started later share those pages instead of each decoding its
    own copy.
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        masks: Mapping[str, Path],
        patch_size: int,
        cache: bool = False,
        targets: GroundTruth | None = None,
    ):
        self.dataset, self.mask_paths, self.patch_size = dataset, dict(masks), patch_size
        self.targets = targets
        self._stores: dict[str, MaskStore] = {}
        self._cache: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] | None = (
            {} if cache else None
        )
        for kind in self.mask_paths:
            missing = [im["id"] for im in dataset.images if im["id"] not in self._store(kind)]
            if missing:
                raise MissingInputError(
                    f"{self.mask_paths[kind]}: no mask for image ids {missing[:5]} of "
                    f"{dataset.path}; rebuild the masks"
                )
        if cache:
            with ThreadPoolExecutor(4) as pool:  # PIL and zarr decode outside the GIL
                for _ in pool.map(self._load, range(len(self))):  # each fills its entry
                    pass

    def _store(self, kind: str) -> MaskStore:
        if kind not in self._stores:  # opened lazily: each DataLoader worker opens its own
            self._stores[kind] = MaskStore(self.mask_paths[kind])
        return self._stores[kind]

    def __len__(self) -> int:
        return len(self.dataset.images)

    def _load(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = self.dataset.images[index]
        rgb = read_rgb(self.dataset.image_path(image))
        masks = {}
        for kind, path in self.mask_paths.items():
            mask = self._store(kind).mask(image["id"])
            if mask.shape != rgb.shape[:2]:
                raise MissingInputError(
                    f"{path}: mask of image id {image['id']} is {mask.shape[::-1]}, image "
                    f"{self.dataset.image_path(image)} is {rgb.shape[1::-1]}; rebuild the masks"
                )
            masks[kind] = pad_to(mask, self.patch_size)
        if self.targets is not None:
            masks[TARGETS] = self._image_targets(image)
        loaded = pad_to(rgb, self.patch_size), masks
        if self._cache is not None:
            self._cache[index] = loaded
        return loaded

    def _image_targets(self, image: dict) -> np.ndarray:
        """The image's ground truth, padded as its pixels are."""
        assert self.targets is not None
        found = self.targets.image_targets(self.dataset, image)
        if self.targets.kind == "boxes":
            return mirror_boxes(found, image["height"], image["width"], self.patch_size)
        return pad_to(found, self.patch_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, masks = self._load(index)
        p = self.patch_size
        top = int(torch.randint(0, rgb.shape[0] - p + 1, ()))
        left = int(torch.randint(0, rgb.shape[1] - p + 1, ()))
        crop = np.ascontiguousarray(rgb[top : top + p, left : left + p])
        sample = {"x": torch.from_numpy(crop).permute(2, 0, 1).float().div(255.0)}
        for kind, mask in masks.items():
            if kind == TARGETS and self.targets is not None and self.targets.kind == "boxes":
                sample[kind] = crop_boxes(mask, top, left, p)
                continue
            window = torch.from_numpy(np.ascontiguousarray(mask[top : top + p, left : left + p]))
            sample[kind] = window if kind == TARGETS else window.float().unsqueeze(0)
        return sample

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict:
        """Stacked tensors; boxes (a different count per crop) as a list of (n, 5) tensors."""
        if self.targets is None or self.targets.kind != "boxes":
            return default_collate(samples)
        rest = [{k: v for k, v in sample.items() if k != TARGETS} for sample in samples]
        return {**default_collate(rest), TARGETS: [sample[TARGETS] for sample in samples]}
