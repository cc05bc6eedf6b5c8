"""Training samples: random crops of images with the identical crop of their mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

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


class MaskedCrops(Dataset):
    """`(x, m)` pairs: a random `patch_size` crop of an image in [0, 1] (3×P×P) and of its mask.

    Images smaller than the crop are mirror-padded first, image and mask alike. Without a mask
    store the mask is all ones. With `cache`, decoded images and masks stay in memory (for
    small datasets; each DataLoader worker holds its own copy).
    """

    def __init__(
        self, dataset: PreparedDataset, masks: Path | None, patch_size: int, cache: bool = False
    ):
        self.dataset, self.masks_path, self.patch_size = dataset, masks, patch_size
        self._store: MaskStore | None = None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        if masks is not None:
            missing = [im["id"] for im in dataset.images if im["id"] not in self.store]
            if missing:
                raise ValueError(f"{masks}: no mask for image ids {missing[:5]}; rebuild the masks")

    @property
    def store(self) -> MaskStore:
        if self._store is None:  # opened lazily: each DataLoader worker opens its own
            self._store = MaskStore(self.masks_path)
        return self._store

    def __len__(self) -> int:
        return len(self.dataset.images)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = self.dataset.images[index]
        rgb = read_rgb(self.dataset.image_path(image))
        if self.masks_path is None:
            mask = np.ones(rgb.shape[:2], dtype=bool)
        else:
            mask = self.store.mask(image["id"])
        if mask.shape != rgb.shape[:2]:
            raise ValueError(
                f"{self.masks_path}: mask of image id {image['id']} is {mask.shape[::-1]}, "
                f"image {self.dataset.image_path(image)} is {rgb.shape[1::-1]}; rebuild the masks"
            )
        p = self.patch_size
        rgb, mask = pad_to(rgb, p), pad_to(mask, p)
        if self._cache is not None:
            self._cache[index] = rgb, mask
        return rgb, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, mask = self._load(index)
        p = self.patch_size
        top = int(torch.randint(0, rgb.shape[0] - p + 1, ()))
        left = int(torch.randint(0, rgb.shape[1] - p + 1, ()))
        crop = np.ascontiguousarray(rgb[top : top + p, left : left + p])
        x = torch.from_numpy(crop).permute(2, 0, 1).float().div(255.0)
        m = torch.from_numpy(np.ascontiguousarray(mask[top : top + p, left : left + p]))
        return x, m.float().unsqueeze(0)
