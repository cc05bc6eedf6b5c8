"""The mask store: one zarr v3 group of binary masks, one per image, in sharded chunks.

Layout of `<name>.zarr`:

- `mask`: bool array (N, H, W), H and W the largest image height and width; image i's mask sits
  at `mask[i, :height[i], :width[i]]` and the rest is False.
- `image_id` (int64), `height` and `width` (int32): arrays of length N.
- attributes `icmflow`: `format`, `version`, `kind` (object, edge, ...), `complete`, `fingerprint`.

Why this layout:

- Chunks are (1, H, W): one image's mask is exactly one chunk, so reading it costs O(1) chunk
  reads (one shard-index read and one chunk read) whatever N is, and no neighbour is decoded.
- Shards are (S, H, W) with S = `images_per_shard`: S consecutive images share one file, so a
  store has N / S files instead of N (DVC and object stores handle few large files far better).
  Builders hand each shard, a whole shard region, to exactly one task: no two writers ever
  write the same file, and zarr writes every shard file through a rename.
- Padding to the largest size costs almost nothing: blosc's bitshuffle packs the 0/1 bytes into
  bits and zstd removes the runs, about 2 KB for a 640×480 COCO-like mask, less than the same
  mask as COCO RLE in JSON (see `benchmarks/masks.py`).
- A store is readable only once `complete` is true; builders set it as their last write, just
  before moving the store into place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

FORMAT = "icmflow-mask-store"
VERSION = 1
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


class IncompleteStoreError(RuntimeError):
    """The store exists but its builder never finished."""


def create_store(
    path: Path | str,
    *,
    image_ids: Sequence[int],
    heights: Sequence[int],
    widths: Sequence[int],
    images_per_shard: int,
    attrs: dict[str, Any],
) -> None:
    """Create an empty, incomplete store for the given images (index arrays written here)."""
    n = len(image_ids)
    h = max(max(heights, default=1), 1)
    w = max(max(widths, default=1), 1)
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs["icmflow"] = {"format": FORMAT, "version": VERSION, "complete": False, **attrs}
    group.create_array(
        "mask",
        shape=(n, h, w),
        chunks=(1, h, w),
        shards=(images_per_shard, h, w),
        dtype=bool,
        fill_value=False,
        compressors=COMPRESSOR,
    )
    for name, values, dtype in (
        ("image_id", image_ids, np.int64),
        ("height", heights, np.int32),
        ("width", widths, np.int32),
    ):
        array = np.asarray(values, dtype=dtype)
        group.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype=dtype, fill_value=0)[:] = (
            array
        )


def write_shard(path: Path | str, start: int, masks: Sequence[np.ndarray]) -> None:
    """Write the masks of images start, start+1, ... padded into the full (k, H, W) region."""
    array = zarr.open_group(path, mode="r+")["mask"]
    _, h, w = array.shape
    block = np.zeros((len(masks), h, w), dtype=bool)
    for k, mask in enumerate(masks):
        block[k, : mask.shape[0], : mask.shape[1]] = mask
    array[start : start + len(masks)] = block


def mark_complete(path: Path | str) -> None:
    group = zarr.open_group(path, mode="r+")
    group.attrs["icmflow"] = {**group.attrs["icmflow"], "complete": True}


def store_attrs(path: Path | str) -> dict[str, Any]:
    return dict(zarr.open_group(path, mode="r").attrs["icmflow"])


class MaskStore:
    """Read masks by image id from a complete store."""

    def __init__(self, path: Path | str):
        self.path = path
        try:
            group = zarr.open_group(path, mode="r")
            self.attrs = dict(group.attrs["icmflow"])
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            raise FileNotFoundError(
                f"{path}: no mask store here; run `icmflow masks` (or `dvc repro`) first"
            ) from None
        if not self.attrs.get("complete"):
            raise IncompleteStoreError(
                f"{path}: mask store is incomplete (its build was interrupted); rerun its stage"
            )
        self._mask = group["mask"]
        self.image_ids = group["image_id"][:].tolist()
        self._heights = group["height"][:]
        self._widths = group["width"][:]
        self._index = {image_id: i for i, image_id in enumerate(self.image_ids)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: int) -> bool:
        return image_id in self._index

    def mask(self, image_id: int) -> np.ndarray:
        """The H×W bool mask of `image_id` (one chunk read)."""
        try:
            i = self._index[image_id]
        except KeyError:
            raise KeyError(f"{self.path}: no mask for image id {image_id}") from None
        return self._mask[i, : self._heights[i], : self._widths[i]]
