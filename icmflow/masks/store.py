"""The mask store: one zarr v3 group of binary masks, one per image, in sharded chunks.

Layout of `<name>.zarr`:

- `mask`: uint8 array (N, ceil(H / 8), W), H and W the largest image height and width. Image i's
  mask is bit-packed down its columns (`numpy.packbits(mask, axis=0)`: bit 7 of byte r holds row
  8r) and sits at `mask[i, :ceil(height[i] / 8), :width[i]]`; the rest is 0. `MaskStore.mask`
  unpacks it; with plain zarr: `numpy.unpackbits(mask[i], axis=0, count=height)[:, :width]`.
- `image_id` (int64), `height` and `width` (int32): arrays of length N.
- attributes `icmflow`: `format`, `version`, `packing`, `kind` (object, edge, ...), `complete`,
  `fingerprint`.

Why this layout:

- Chunks are (1, ceil(H / 8), W): one image's mask is exactly one chunk, so reading it costs
  O(1) reads (one shard index and one chunk) whatever N is, and no neighbour is decoded.
- Shards are (S, ceil(H / 8), W) with S = `images_per_shard`: S consecutive images share one
  file, so a store has N / S files instead of N (DVC and object stores handle few large files
  far better). Builders hand each shard, a whole shard region, to exactly one task: no two
  writers ever write the same file, and every shard file is written through a rename.
- Packing down the columns matches pycocotools, whose RLE decode yields column-major arrays: the
  packing reads memory in order and never transposes. Eight pixels per byte, then zstd (level 1,
  a core zarr codec) on runs of zeros: about 0.8 KB for a 640×480 COCO-like mask, less than the
  same mask as COCO RLE in JSON, and the padding of smaller images costs next to nothing
  (see `benchmarks/masks.py`).
- Writers encode whole shard files themselves (`encode_shard`), exactly as zarr's sharding codec
  would (a test compares the bytes with zarr's own writer): zarr's per-chunk codec pipeline
  costs several times the compression itself for many small chunks.
- A store is readable only once `complete` is true; builders set it as their last write, just
  before moving the store into place. A store may live at an fsspec URL (`s3://…`): zarr writes
  through fsspec, every shard and `zarr.json` is one object written in one request, so without a
  rename the `complete` flag in `zarr.json`, written last, is the completion marker.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from icmflow.core.errors import MissingInputError
from icmflow.core.storage import is_url

FORMAT = "icmflow-mask-store"
VERSION = 2
PACKING = "numpy.packbits(mask, axis=0)"
COMPRESSOR = ZstdCodec(level=1)
"""The chunk codec the array metadata declares."""
_CHUNK_ENCODER = Zstd(level=1)
"""The same codec, called directly by `encode_shard`; a test checks both give the same bytes."""
_EMPTY = 2**64 - 1
"""Offset and length of a chunk absent from a shard (all zero, the fill value)."""


class IncompleteStoreError(MissingInputError):
    """The store exists but its builder never finished."""


def _open(path: Path | str, mode: str) -> zarr.Group:
    """The store's group; a URL goes to zarr as a string, which opens it through fsspec."""
    return zarr.open_group(str(path) if is_url(path) else path, mode=mode, zarr_format=3)


def _packed_rows(height: int) -> int:
    return -(-height // 8)


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
    rows = _packed_rows(max(max(heights, default=1), 1))
    width = max(max(widths, default=1), 1)
    group = _open(path, "w")
    group.attrs["icmflow"] = {
        "format": FORMAT,
        "version": VERSION,
        "packing": PACKING,
        "complete": False,
        **attrs,
    }
    group.create_array(
        "mask",
        shape=(n, rows, width),
        chunks=(1, rows, width),
        shards=(images_per_shard, rows, width),
        dtype=np.uint8,
        fill_value=0,
        compressors=COMPRESSOR,
    )
    for name, values, dtype in (
        ("image_id", image_ids, np.int64),
        ("height", heights, np.int32),
        ("width", widths, np.int32),
    ):
        array = group.create_array(name, shape=(n,), chunks=(max(n, 1),), dtype=dtype, fill_value=0)
        array[:] = np.asarray(values, dtype=dtype)


def pack(mask: np.ndarray) -> np.ndarray:
    """A boolean H×W mask as the store keeps it: bit-packed down its columns, ceil(H / 8)×W."""
    return np.packbits(mask, axis=0)


def encode_shard(
    packed: Sequence[np.ndarray], images_per_shard: int, rows: int, width: int
) -> bytes | None:
    """The bytes of one shard file holding the `pack`ed masks (at most `images_per_shard`), as
    zarr writes it.

    Chunks are compressed one after another, all-zero chunks omitted, then the index: (offset,
    length) as little-endian uint64 per chunk, followed by the CRC32C of the index. None when
    every mask is empty (zarr writes no file then).
    """
    index = np.full((images_per_shard, 2), _EMPTY, dtype="<u8")
    parts, offset = [], 0
    chunk = np.zeros((rows, width), dtype=np.uint8)
    for k, bits in enumerate(packed):
        if not bits.any():
            continue
        r, w = bits.shape
        chunk[:r, :w] = bits
        chunk[r:] = 0  # clear what an earlier, larger mask left
        chunk[:r, w:] = 0
        data = _CHUNK_ENCODER.encode(chunk)
        index[k] = offset, len(data)
        parts.append(data)
        offset += len(data)
    if not parts:
        return None
    index_bytes = index.tobytes()
    return b"".join(parts) + index_bytes + struct.pack("<I", google_crc32c.value(index_bytes))


def write_shard(path: Path | str, shard: int, packed: Sequence[np.ndarray]) -> None:
    """Write shard number `shard` (images shard*S, shard*S+1, ...), its masks `pack`ed, with one
    store write."""
    group = _open(path, "r+")
    array = group["mask"]
    _, rows, width = array.shape
    data = encode_shard(packed, array.shards[0], rows, width)
    if data is not None:
        buffer = default_buffer_prototype().buffer.from_bytes(data)
        sync(group.store.set(f"mask/c/{shard}/0/0", buffer))


def mark_complete(path: Path | str) -> None:
    group = _open(path, "r+")
    group.attrs["icmflow"] = {**group.attrs["icmflow"], "complete": True}


def store_attrs(path: Path | str) -> dict[str, Any]:
    return dict(_open(path, "r").attrs["icmflow"])


class MaskStore:
    """Read masks by image id from a complete store."""

    def __init__(self, path: Path | str):
        self.path = path
        try:
            group = _open(path, "r")
            self.attrs = dict(group.attrs["icmflow"])
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            raise MissingInputError(
                f"{path}: no mask store here; run `icmflow masks` (or `dvc repro`) first"
            ) from None
        if self.attrs.get("version") != VERSION:
            raise MissingInputError(
                f"{path}: mask store version {self.attrs.get('version')}, this icmflow reads "
                f"version {VERSION}; rebuild it (rerun its stage)"
            )
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
        height, width = int(self._heights[i]), int(self._widths[i])
        packed = self._mask[i, : _packed_rows(height), :width]
        return np.unpackbits(packed, axis=0, count=height).view(bool)
