"""Training samples: random crops of images with the identical crops of their masks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from icmflow.core.errors import MissingInputError
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.store import MaskStore


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Mirror-pad the bottom/right of an H×W(×C) array so both sides are at least `size`."""
    pad_h, pad_w = max(size - array.shape[0], 0), max(size - array.shape[1], 0)
    if not (pad_h or pad_w):
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="symmetric")


class TrainingCrops(Dataset):
    """Samples `{"x": 3×P×P image in [0, 1], <kind>: 1×P×P mask, ...}`: one random `patch_size`
    crop of an image and the same crop of its mask of every kind in `masks` (kind -> store).

    Images smaller than the crop are mirror-padded first, image and masks alike. With `cache`,
    decoded images and masks stay in memory (for small datasets; each DataLoader worker holds
    its own copy).
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        masks: Mapping[str, Path],
        patch_size: int,
        cache: bool = False,
    ):
        self.dataset, self.mask_paths, self.patch_size = dataset, dict(masks), patch_size
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
        loaded = pad_to(rgb, self.patch_size), masks
        if self._cache is not None:
            self._cache[index] = loaded
        return loaded

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, masks = self._load(index)
        p = self.patch_size
        top = int(torch.randint(0, rgb.shape[0] - p + 1, ()))
        left = int(torch.randint(0, rgb.shape[1] - p + 1, ()))
        crop = np.ascontiguousarray(rgb[top : top + p, left : left + p])
        sample = {"x": torch.from_numpy(crop).permute(2, 0, 1).float().div(255.0)}
        for kind, mask in masks.items():
            window = np.ascontiguousarray(mask[top : top + p, left : left + p])
            sample[kind] = torch.from_numpy(window).float().unsqueeze(0)
        return sample
