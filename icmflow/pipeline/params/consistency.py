"""Checks across sections, each naming the key at fault: (key, message) pairs."""

from __future__ import annotations

from icmflow.pipeline.params.codecs import (
    init_problems,
    is_roi,
    is_scalable,
    roi_problems,
    scalable_problems,
    secondary_problems,
)
from icmflow.pipeline.params.project import Params
from icmflow.pipeline.params.tasks import ORIGINAL

Problem = tuple[str, str]


def _split_problems(params: Params, key: str, dataset: str, split: str) -> list[Problem]:
    if dataset not in params.datasets:
        return [
            (f"{key}.dataset", f"{dataset!r} is not under datasets ({', '.join(params.datasets)})")
        ]
    splits = params.datasets[dataset].splits
    if split not in splits:
        return [
            (
                f"{key}.split",
                f"{split!r} is not a split of dataset {dataset!r} (splits: {', '.join(splits)})",
            )
        ]
    return []


def _schedule_problems(params: Params) -> list[Problem]:
    """Milestones written for the poly schedule, which has none (in `train` or a codec's
    `train`); the default milestones are multistep's and poly leaves them aside."""
    written = "lr_milestones" in params.train.model_fields_set
    settings = [("train", params.train, written)]
    for name in params.trained_codecs:
        overrides = params.codec(name).train
        if overrides.lr_schedule or overrides.lr_milestones is not None:
            own = overrides.lr_milestones is not None
            settings.append((f"codecs.{name}.train", params.training(name), written or own))
    return [
        (
            key,
            f"lr_milestones {train.lr_milestones} are for lr_schedule multistep; poly decays "
            "over the steps after lr_poly_start: set lr_milestones: []",
        )
        for key, train, milestones in settings
        if train.lr_schedule == "poly" and milestones and train.lr_milestones
    ]


def _training_problems(params: Params) -> list[Problem]:
    problems = _split_problems(params, "train", params.train.dataset, params.train.split)
    problems += _schedule_problems(params)
    for name in params.trained_codecs:
        entry, train = params.codec(name), params.training(name)
        if is_scalable(entry):
            continue  # `_scalable_training_problems`
        key = f"codecs.{name}"
        task = entry.objective_args.get("task")
        if task is not None and task not in params.tasks:
            problems.append(
                (
                    f"{key}.objective_args.task",
                    f"{task!r} is not under tasks ({', '.join(params.tasks) or 'none'}): the "
                    "objective's recognition model is a task entry",
                )
            )
        if entry.train.dataset or entry.train.split:
            problems += _split_problems(params, f"{key}.train", train.dataset, train.split)
        if train.batch_size % train.nproc:
            problems.append(
                (
                    f"{key}.train" if entry.train.batch_size or entry.train.nproc else "train",
                    f"batch_size {train.batch_size} does not split over nproc {train.nproc} "
                    "processes: make it a multiple",
                )
            )
    return problems


def _scalable_training_problems(params: Params) -> list[Problem]:
    problems: list[Problem] = []
    for name in params.trained_codecs:
        entry = params.codec(name)
        if is_scalable(entry) and (entry.train.dataset or entry.train.split):
            train = params.training(name)
            problems += _split_problems(params, f"codecs.{name}.train", train.dataset, train.split)
    return problems


def _sam_problems(params: Params) -> list[Problem]:
    problems: list[Problem] = []
    unknown = [d for d in params.edges.datasets if d not in params.datasets]
    if unknown:
        problems.append(
            (
                "edges.datasets",
                f"lists {unknown}, not under datasets ({', '.join(params.datasets)})",
            )
        )
    if len(set(params.edges.datasets)) != len(params.edges.datasets):
        problems.append(("edges.datasets", "lists a dataset twice"))
    users = [f"edges.datasets {params.edges.datasets}"] if params.edges.datasets else []
    if params.masks.source == "sam-boxes":
        users.append("masks.source sam-boxes")
    if users and params.sam.checkpoint is None:
        from icmflow.vision.sam.model import CHECKPOINTS_URL, OFFICIAL_CHECKPOINTS  # imports torch

        official = OFFICIAL_CHECKPOINTS[params.sam.model_type]
        problems.append(
            (
                "sam.checkpoint",
                f"{' and '.join(users)} need Segment Anything, but sam.checkpoint is not set: "
                f"download {official} (model type {params.sam.model_type}) from "
                f"{CHECKPOINTS_URL} and set sam.checkpoint to its path, e.g. models/sam/{official}",
            )
        )
    return problems


def _task_problems(params: Params) -> list[Problem]:
    problems: list[Problem] = []
    if ORIGINAL in params.codecs:
        problems.append(
            (f"codecs.{ORIGINAL}", "is reserved for the uncompressed images: rename it")
        )
    for name, task in params.tasks.items():
        key = f"tasks.{name}"
        if task.train:
            problems += _split_problems(
                params, f"{key}.train", task.train.dataset, task.train.split
            )
        if not task.finetune:
            continue
        unknown = [c for c in task.finetune.codecs if c not in params.codecs]
        if unknown:
            problems.append(
                (
                    f"{key}.finetune.codecs",
                    f"{unknown} are not under codecs ({', '.join(params.codecs)})",
                )
            )
        if params.encode.train_split is None:
            problems.append(
                (
                    "encode.train_split",
                    f"{key}.finetune trains on coded training images: set encode.train_split "
                    "(e.g. train) so that every encode@ codes that split too",
                )
            )
    splits = (
        params.datasets[params.encode.dataset].splits
        if params.encode.dataset in params.datasets
        else {}
    )
    if params.encode.train_split is not None and splits and params.encode.train_split not in splits:
        problems.append(
            (
                "encode.train_split",
                f"{params.encode.train_split!r} is not a split of dataset "
                f"{params.encode.dataset!r} (splits: {', '.join(splits)})",
            )
        )
    return problems


def unannotated(params: Params, dataset: str) -> bool:
    """Whether `dataset` is under datasets with a format without annotations (images)."""
    return dataset in params.datasets and not params.datasets[dataset].has_annotations


def _annotation_problems(params: Params) -> list[Problem]:
    """Task models read annotations: to train, and to be scored on `encode.dataset`."""
    problems: list[Problem] = []
    dataset = params.encode.dataset
    if params.tasks and unannotated(params, dataset):
        problems.append(
            (
                "tasks",
                f"task models are scored against annotations, but encode.dataset {dataset!r} "
                f"has format {params.datasets[dataset].format} (no annotations): encode an "
                "annotated dataset (coco, yolo, visdrone, cityscapes) or remove tasks",
            )
        )
    roi = [name for name, entry in params.codecs.items() if is_roi(entry)]
    if roi and unannotated(params, dataset):
        problems.append(
            (
                f"codecs.{roi[0]}",
                f"roi codecs code the objects' region at full quality, but encode.dataset "
                f"{dataset!r} has no annotations to draw it from: encode an annotated dataset "
                "or remove the roi entries",
            )
        )
    for name, task in params.tasks.items():
        if task.train and unannotated(params, task.train.dataset):
            problems.append(
                (
                    f"tasks.{name}.train.dataset",
                    f"{task.train.dataset!r} has no annotations to train a task model on",
                )
            )
    return problems


def _bit_map_problems(params: Params) -> list[Problem]:
    problems: list[Problem] = []
    for first, second in params.bit_maps.pairs:
        unlearned = [c for c in (first, second) if c not in params.learned_codecs]
        if unlearned:
            problems.append(
                (
                    "bit_maps.pairs",
                    f"{unlearned} are not learned codecs under codecs: bit maps read a codec's "
                    "likelihoods",
                )
            )
        elif first == second:
            problems.append(("bit_maps.pairs", f"[{first}, {second}] compares a codec with itself"))
    return problems


def _extra_split_problems(params: Params, dataset: str) -> list[Problem]:
    """The split of `encode.datasets.<dataset>`: written, or the dataset's only one."""
    key, split = f"encode.datasets.{dataset}", params.encode.datasets[dataset].split
    if dataset not in params.datasets:
        return [(key, f"{dataset!r} is not under datasets ({', '.join(params.datasets)})")]
    splits = params.datasets[dataset].splits
    if split is None and len(splits) > 1:
        return [(f"{key}.split", f"dataset {dataset!r} has splits {', '.join(splits)}: name one")]
    return [] if split is None else _split_problems(params, key, dataset, split)


def _coded_set_problems(params: Params) -> list[Problem]:
    """`encode.datasets` entries: other datasets than `encode.dataset`, existing splits, codecs
    that can code them; resizes of datasets whose ground truth can be resized."""
    problems: list[Problem] = []
    for dataset, entry in params.encode.datasets.items():
        key = f"encode.datasets.{dataset}"
        if dataset == params.encode.dataset:
            problems.append(
                (key, "is encode.dataset, coded already: list the other datasets to code")
            )
            continue
        problems += _extra_split_problems(params, dataset)
        codecs = entry.codecs if entry.codecs is not None else list(params.codecs)
        unknown = [c for c in codecs if c not in params.codecs]
        if unknown:
            problems.append((f"{key}.codecs", f"{unknown} are not under codecs"))
            continue
        for name in codecs:
            codec = params.codecs[name]
            if is_roi(codec) and unannotated(params, dataset):
                problems.append(
                    (
                        f"{key}.codecs",
                        f"{name} is a roi codec, which codes the objects' region, but "
                        f"{dataset!r} has no annotations to draw it from: list the codecs that "
                        "code it (without the roi ones)",
                    )
                )
            if is_scalable(codec) and codec.machine not in codecs:
                problems.append(
                    (
                        f"{key}.codecs",
                        f"{name} codes its human layer on {codec.machine}'s coded images: list "
                        f"{codec.machine} too",
                    )
                )
    for coded in params.coded_sets():
        format = params.datasets[coded.dataset].format if coded.dataset in params.datasets else ""
        if coded.resize is not None and params.masks.source == "sam-boxes":
            problems.append(
                (
                    f"{coded.key}.resize",
                    "the resized images' object masks are drawn from the scaled annotations, "
                    "not by SAM: with masks.source sam-boxes, evaluate at the images' own size",
                )
            )
        if coded.resize is not None and format == "cityscapes":
            problems.append(
                (
                    f"{coded.key}.resize",
                    f"dataset {coded.dataset!r} is Cityscapes, whose ground truth (gtFine label "
                    "images) is read at its own size: evaluate it unresized",
                )
            )
    return problems


def consistency_problems(params: Params) -> list[Problem]:
    problems = _training_problems(params) + _scalable_training_problems(params)
    problems += scalable_problems(params.codecs) + roi_problems(params.codecs)
    problems += secondary_problems(params.codecs)
    problems += init_problems(params.codecs)
    problems += _split_problems(params, "encode", params.encode.dataset, params.encode.split)
    problems += _coded_set_problems(params)
    series = params.series()
    for anchor in params.report.anchors:
        if anchor not in series:
            problems.append(
                ("report.anchors", f"{anchor!r} is no codec series (series: {', '.join(series)})")
            )
    problems += _task_problems(params) + _annotation_problems(params)
    return problems + _sam_problems(params) + _bit_map_problems(params)
