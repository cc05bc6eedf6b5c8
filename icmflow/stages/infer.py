"""Stage `infer@<source>-<task>`: a task model on the original or a codec's coded images.

`source` is `original` (the uncompressed `encode.split`: the reference line of the plots) or
a codec entry (its coded `encode.split`). Writes the predictions and `accuracy.json`. A
compressed-domain codec's own task predicts from its machine bitstreams instead of its images
(no pixels decoded); `accuracy.json` then also holds their rate (`bpp`, `rate.machine`).
Semantic maps of a Cityscapes `encode.dataset` are scored on its 19 classes (stuff included)
against its gtFine labelIds (`icmflow.tasks.semantic`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from icmflow.coding.coded_dataset import coded_split
from icmflow.core.files import atomic_directory, write_json
from icmflow.datasets.prepared import PreparedDataset
from icmflow.pipeline.coded_sets import load_originals, originals
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import Params, is_compressed_domain
from icmflow.pipeline.params.tasks import ORIGINAL
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.pipeline.tasks import base_weights, load_task_model, semantic_truth
from icmflow.tasks.accuracy import predict_dataset, score_predictions
from icmflow.vision.tasks.base import Prediction

log = logging.getLogger(__name__)


def source_dataset(params: Params, paths: Paths, source: str) -> PreparedDataset:
    """The `encode.split` images of `source`: the original ones (resized with
    `encode.resize`), or a codec's decoded ones."""
    split = params.encode.split
    if source == ORIGINAL:
        return load_originals(paths, params.coded_set(), split)
    params.codec(source)
    return PreparedDataset.load(coded_split(paths.coded(source), split))


def source_file(params: Params, paths: Paths, source: str, split: str) -> Path:
    """What identifies `source`'s images of `split`: the originals' JSON, or the coded
    dataset's bpp table (it holds the digest of every file)."""
    if source == ORIGINAL:
        return originals(paths, params.coded_set(), split)
    return paths.coded(source) / "bpp" / f"{split}.csv"


def run(params: Params, paths: Paths, source: str, task: str) -> None:
    weights = base_weights(params, paths, task)
    dataset = source_dataset(params, paths, source)
    read = [source_file(params, paths, source, params.encode.split), weights]
    score_model(
        params,
        paths,
        source,
        task,
        weights,
        paths.predictions(source, task),
        f"infer@{source}-{task}",
        {"encode": params.encode.model_dump()},
        command=command(params, "infer", source, task),
        inputs=current_inputs(paths.root, read),
        dataset=dataset,
    )


def score_model(
    params: Params,
    paths: Paths,
    source: str,
    task: str,
    weights: Path,
    out_dir: Path,
    stage: str,
    recorded: dict,
    *,
    command: str,
    inputs: dict[str, str],
    dataset: PreparedDataset,
) -> None:
    """Task `task`'s model in `weights` on `source`'s images (`dataset`): predictions,
    `accuracy.json` and the provenance of `stage` (the task entry and `recorded` params, the
    `command` and the digests of its `inputs`) written to `out_dir`."""
    entry = params.task(task)
    truth = semantic_truth(params, task, dataset)
    categories = None if truth is None else truth.categories
    model, mapping = load_task_model(params, task, weights, dataset, categories)
    log.info("%s: %s", task, mapping.description)
    log.debug("%s class mapping: %s", task, mapping.pairs)
    rate: dict = {}
    if from_machine_bitstreams(params, source, task):
        predictions, rate = _machine_predictions(params, paths, source)
    else:
        predictions = predict_dataset(model, dataset)
    with atomic_directory(out_dir) as out:
        accuracy = score_predictions(entry.kind, dataset, predictions, mapping, out, semantic=truth)
        write_json(out / "accuracy.json", {"source": source, "task": task, **accuracy, **rate})
        write_provenance(
            out,
            stage,
            {"tasks": {task: entry.model_dump()}, **recorded},
            command=command,
            inputs=inputs,
        )
    log.info("%s on %s: %s", task, source, _headline(accuracy))


def from_machine_bitstreams(params: Params, source: str, task: str) -> bool:
    """Whether `source` is a compressed-domain codec whose machine bitstreams serve `task`."""
    if source == ORIGINAL:
        return False
    entry = params.codec(source)
    return is_compressed_domain(entry) and entry.machine_task == task


def _machine_predictions(
    params: Params, paths: Paths, codec: str
) -> tuple[dict[int, Prediction], dict]:
    """The task's predictions from the codec's machine bitstreams, and their rate."""
    from icmflow.coding.machine import predict_split
    from icmflow.pipeline.tasks import machine_codec

    machine = machine_codec(params, paths, codec, params.encode.device)
    predictions, rate = predict_split(machine, paths.coded(codec), params.encode.split)
    return predictions, {"rate": {"machine": rate}, "bpp": rate["bpp"]}


def _headline(accuracy: dict) -> str:
    if "miou" in accuracy:
        return f"mIoU {accuracy['miou']:.4f}"
    if "mae" in accuracy:
        return f"MAE {accuracy['mae']:.4f}"
    return ", ".join(
        f"{iou_type} mAP50-95 {scores['map']:.4f} mAP50 {scores['map50']:.4f}"
        for iou_type, scores in accuracy.items()
        if scores["map"] is not None
    )
