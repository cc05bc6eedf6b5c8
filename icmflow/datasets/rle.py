"""COCO annotations as run-length encodings (pycocotools), and their union into an object mask."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def annotation_rle(annotation: dict, height: int, width: int) -> dict:
    """The annotation's region as one compressed RLE, exactly as pycocotools' `annToRLE`.

    Polygons, uncompressed RLE (crowd) and compressed RLE are taken as pycocotools takes them;
    an annotation without a segmentation (box-only datasets) covers its bbox.
    """
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return segmentation
    box = np.asarray([annotation["bbox"]], dtype=np.float64)  # a list of boxes is refused
    return mask_utils.frPyObjects(box, height, width)[0]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (as crowd regions use): column-major run lengths, zeros first."""
    flat = mask.flatten(order="F").astype(np.uint8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


CODE_FIRST = 48
"""pycocotools codes 6 bits per character, from '0' (48) to 'o' (111)."""
MAX_RUN_CHARS = 7
"""Characters of the longest run pycocotools writes: 32 bits and the sign, 5 bits each."""


def _rle_counts(counts: bytes | str) -> np.ndarray:
    """The run lengths of a compressed RLE string, vectorised as pycocotools' `rleFrString`.

    Each run length is coded in 6-bit characters (offset 48): 5 value bits, low bits first, and
    bit 0x20 meaning "more follows"; bit 0x10 of the last character extends the sign. From the
    fourth run on, a value is the difference to the run two before it.
    """
    if isinstance(counts, str):  # as COCO JSON holds them
        counts = counts.encode("ascii")
    chars = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    ends = np.flatnonzero((chars & 0x20) == 0)
    starts = np.empty_like(ends)
    starts[:1], starts[1:] = 0, ends[:-1] + 1
    lengths = ends - starts + 1
    digit = np.arange(len(chars)) - np.repeat(starts, lengths)
    runs = np.add.reduceat((chars & 0x1F) << (5 * digit), starts)
    negative = (chars[ends] & 0x10) != 0
    runs[negative] |= -1 << (5 * lengths[negative])
    runs[1::2] = np.cumsum(runs[1::2])  # run 3 adds run 1, run 5 adds run 3, ...
    runs[2::2] = np.cumsum(runs[2::2])
    return runs


def counts_problem(counts: str, height: int, width: int) -> str | None:
    """Why a compressed RLE string does not cover a `height`×`width` image, or None.

    pycocotools trusts the counts: run lengths that do not add up to height × width (or a
    negative one, which its C code takes as a huge unsigned run) make `merge` loop forever.
    """
    if not counts.isascii():
        return "compressed RLE counts must be ASCII ('0'..'o', pycocotools' 6-bit code)"
    chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8)
    if ((chars < CODE_FIRST) | (chars >= CODE_FIRST + 64)).any():
        return "compressed RLE counts hold characters outside '0'..'o' (pycocotools' 6-bit code)"
    ends = np.flatnonzero(((chars - CODE_FIRST) & 0x20) == 0)
    if len(ends) and (np.diff(ends, prepend=-1) > MAX_RUN_CHARS).any():
        return f"compressed RLE counts code a run in more than {MAX_RUN_CHARS} characters"
    if len(chars) and (len(ends) == 0 or ends[-1] != len(chars) - 1):
        return "compressed RLE counts end inside a run: the string is truncated"
    runs = _rle_counts(counts)
    if (runs < 0).any():
        return "compressed RLE counts decode to a negative run length: the string is corrupt"
    if runs.sum() != height * width:
        return (
            f"compressed RLE run lengths add up to {runs.sum()} pixels, not {height}*{width}: "
            "the counts belong to another size or are corrupt"
        )
    return runs_problem(runs.tolist())


def runs_problem(runs: list[int]) -> str | None:
    """Why run lengths that cover their image still cannot go to pycocotools, or None."""
    if 0 in runs[1:]:
        return (
            "RLE counts hold an empty run after the first (pycocotools never writes one, and "
            "its merge gives garbage on them): join the runs on either side"
        )
    return None


def decode(rle: dict) -> np.ndarray:
    """A compressed RLE as an H×W bool array (column-major view), equal to pycocotools' `decode`."""
    height, width = rle["size"]
    runs = _rle_counts(rle["counts"])
    if (runs < 0).any() or runs.sum() != height * width:
        raise ValueError(f"RLE run lengths do not cover its {height}x{width} size")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(width, height).T


def rle_area_and_bbox(rle: dict) -> tuple[int, list[float]]:
    return int(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]


def object_mask(
    annotations: list[dict], height: int, width: int, *, include_crowd: bool
) -> np.ndarray:
    """Union of the annotations' regions as a `height`×`width` bool array.

    All polygons go through one `frPyObjects` call and every RLE is merged before one decode, so
    the cost is one decode per image instead of one per instance; the result is pixel-identical
    to OR-ing pycocotools' `annToMask` of every instance.
    """
    polygons: list[list[float]] = []
    rles: list[dict] = []
    for ann in annotations:
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list) and segmentation:
            polygons.extend(segmentation)
        else:
            rles.append(annotation_rle(ann, height, width))
    if polygons:
        rles.extend(mask_utils.frPyObjects(polygons, height, width))
    if not rles:
        return np.zeros((height, width), dtype=bool)
    merged = rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=False)
    return decode(merged)
