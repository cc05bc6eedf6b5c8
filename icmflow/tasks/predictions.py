"""Task predictions as files: COCO results JSON (boxes, masks) and label PNGs (semantic maps).

Both are in the dataset's category ids (through a `ClassMapping`); predictions of model classes
that are no dataset category are dropped.

Label PNG convention: one single-channel PNG per image, each pixel the category id it is
predicted as, 0 meaning background / no category (so category ids must be >= 1). The PNG is
8-bit when every category id fits (<= 255), 16-bit otherwise. It lies at the image's
`file_name` (sub-folders kept) with the suffix `.png`, under the output folder.

Foreground maps (foreground extraction) are written the same way, as 8-bit grey PNGs of the
probability: round(p·255), as salient-object benchmarks store their maps; `read_foreground_png`
returns the value / 255 that is scored.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from icmflow.core.errors import InputError, MissingInputError
from icmflow.core.files import write_bytes, write_json
from icmflow.datasets.coco import load_json
from icmflow.datasets.file_names import output_stem
from icmflow.tasks.classes import ClassMapping
from icmflow.vision.tasks.base import Detections, TaskKind

BOX_DECIMALS = 3
SCORE_DECIMALS = 5


def coco_results(
    predictions: dict[int, Detections], mapping: ClassMapping, kind: TaskKind
) -> list[dict]:
    """COCO results (image_id, category_id, bbox x, y, w, h, score, and for instance
    segmentation an RLE `segmentation` with str counts), in image-id order."""
    if kind == "semantic_segmentation":
        raise ValueError("semantic predictions are label maps: write them with write_label_maps")
    results = []
    for image_id in sorted(predictions):
        detections = predictions[image_id]
        if kind == "instance_segmentation" and detections.masks is None:
            raise ValueError(f"image {image_id}: instance segmentation detections carry no masks")
        for i, model_class in enumerate(detections.classes.tolist()):
            category = mapping.category_of(model_class)
            if category is None:
                continue
            x0, y0, x1, y1 = (float(v) for v in detections.boxes[i])
            result = {
                "image_id": int(image_id),
                "category_id": category,
                "bbox": [round(v, BOX_DECIMALS) for v in (x0, y0, x1 - x0, y1 - y0)],
                "score": round(float(detections.scores[i]), SCORE_DECIMALS),
            }
            if kind == "instance_segmentation":
                result["segmentation"] = _json_rle(detections.masks[i])
            results.append(result)
    return results


def _json_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def write_results(path: Path, results: list[dict]) -> None:
    """Write COCO results JSON atomically."""
    write_json(path, results, indent=None)


def read_results(path: Path) -> list[dict]:
    """Read a COCO results JSON; `InputError` naming the file when it is missing or no list."""
    results = load_json(path)
    if not isinstance(results, list):
        raise InputError(path, "", "not a COCO results file (a list of detections)")
    return results


def label_png_path(out_dir: Path, file_name: str) -> Path:
    """Where the label PNG of the image `file_name` lies under `out_dir` (a name that would
    leave it is refused: `file_names.output_stem`)."""
    return Path(out_dir) / f"{output_stem(file_name, out_dir)}.png"


def write_label_maps(
    maps: dict[int, np.ndarray], out_dir: Path, file_names: dict[int, str], *, largest: int
) -> None:
    """Write each image's (H, W) map of label values (0..`largest`) as a label PNG, 8-bit
    when `largest` fits, else 16-bit."""
    paths = {image_id: label_png_path(out_dir, file_names[image_id]) for image_id in maps}
    if len(set(paths.values())) < len(paths):
        raise ValueError("images whose file names differ only in the suffix share a label PNG")
    dtype = np.uint8 if largest <= 255 else np.uint16
    for image_id, path in paths.items():
        buffer = io.BytesIO()
        Image.fromarray(maps[image_id].astype(dtype)).save(buffer, format="PNG")
        write_bytes(path, buffer.getvalue())


def quantised_foreground(probabilities: np.ndarray) -> np.ndarray:
    """A foreground probability map as its 8-bit PNG holds it: round(p·255), uint8."""
    return np.rint(np.clip(probabilities, 0, 1) * 255).astype(np.uint8)


def write_foreground_pngs(
    predictions: dict[int, np.ndarray], out_dir: Path, file_names: dict[int, str]
) -> None:
    """Write each image's (H, W) foreground probabilities as an 8-bit PNG (module doc)."""
    for image_id, probabilities in predictions.items():
        buffer = io.BytesIO()
        Image.fromarray(quantised_foreground(probabilities)).save(buffer, format="PNG")
        write_bytes(label_png_path(out_dir, file_names[image_id]), buffer.getvalue())


def read_foreground_png(out_dir: Path, file_name: str) -> np.ndarray:
    """The foreground map of the image `file_name` under `out_dir`: (H, W) float64 in [0, 1]."""
    return read_label_png(out_dir, file_name) / 255.0


def read_label_png(out_dir: Path, file_name: str) -> np.ndarray:
    """The label PNG of the image `file_name` under `out_dir` as an (H, W) int64 array."""
    path = label_png_path(out_dir, file_name)
    if not path.is_file():
        raise MissingInputError(f"{path}: label PNG not found; predict the images again")
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)
