"""A task model over a dataset: its predictions, and their accuracy against the annotations.

Detection and instance segmentation give COCO results (mAP50-95 and mAP50 of boxes, and of
masks for instances, by pycocotools' COCOeval); semantic segmentation gives label PNGs and mIoU
against the annotations rasterised per category, or Cityscapes' 19 classes
(`icmflow.tasks.semantic`); foreground extraction gives 8-bit foreground PNGs and their MAE
against the object masks (`scoring.foreground_ground_truth`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from icmflow.core.errors import InputError
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.tasks.classes import ClassMapping
from icmflow.tasks.predictions import (
    coco_results,
    quantised_foreground,
    write_foreground_pngs,
    write_label_maps,
    write_results,
)
from icmflow.tasks.scoring import foreground_ground_truth, score_detection, score_foreground
from icmflow.tasks.semantic import SemanticTruth, instance_truth
from icmflow.vision.tasks.base import Prediction, TaskKind, TaskModel

IOU_TYPES: dict[TaskKind, tuple[str, ...]] = {
    "detection": ("bbox",),
    "instance_segmentation": ("bbox", "segm"),
}


def predict_dataset(
    model: TaskModel, dataset: PreparedDataset, *, batch_size: int = 8
) -> dict[int, Prediction]:
    """Image id -> the model's prediction on that image, read from the dataset's files."""
    images = dataset.images
    predictions: dict[int, Prediction] = {}
    with tqdm(total=len(images), desc=f"infer {dataset.path.name}", unit="img") as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            pixels = [_read(dataset, image) for image in batch]
            for image, prediction in zip(batch, model.predict(pixels), strict=True):
                predictions[image["id"]] = prediction
            bar.update(len(batch))
    return predictions


def _read(dataset: PreparedDataset, image: dict) -> np.ndarray:
    """An image's pixels, refused when undecodable or not the size its annotations are for."""
    path = dataset.image_path(image)
    try:
        rgb = read_rgb(path)
    except (OSError, ValueError) as err:
        raise InputError(
            path, "", f"cannot be decoded ({err}): rerun the stage that wrote it"
        ) from None
    if rgb.shape[:2] != (image["height"], image["width"]):
        raise InputError(
            path,
            "",
            f"is {rgb.shape[1]}x{rgb.shape[0]} but {dataset.path} annotates it as "
            f"{image['width']}x{image['height']}: rerun the stage that wrote it",
        )
    return rgb


def score_predictions(
    kind: TaskKind,
    dataset: PreparedDataset,
    predictions: dict[int, Prediction],
    mapping: ClassMapping,
    out: Path,
    *,
    semantic: SemanticTruth | None = None,
) -> dict:
    """Write the predictions under `out` (`predictions.json`, `labels/` or `foreground/` PNGs)
    and return their accuracy against `dataset`'s annotations (semantic maps: against
    `semantic`, by default the annotations rasterised, `instance_truth`)."""
    if kind == "foreground":  # scored as written: 8-bit maps
        names = {image["id"]: image["file_name"] for image in dataset.images}
        write_foreground_pngs(predictions, out / "foreground", names)
        return score_foreground(
            (foreground_ground_truth(dataset, image) for image in dataset.images),
            (quantised_foreground(predictions[image["id"]]) / 255.0 for image in dataset.images),
        )
    if kind == "semantic_segmentation":
        truth = semantic or instance_truth(dataset)
        labels = {i: truth.predicted(mapping, p) for i, p in predictions.items()}
        names = {image["id"]: image["file_name"] for image in dataset.images}
        pngs = {i: truth.png_values(m) for i, m in labels.items()}
        write_label_maps(pngs, out / "labels", names, largest=truth.png_largest)
        return truth.score(dataset, labels)
    results = coco_results(predictions, mapping, kind)
    write_results(out / "predictions.json", results)
    return {
        iou_type: score_detection(dataset.data, results, iou_type) for iou_type in IOU_TYPES[kind]
    }
