"""Stage `train@<codec>`: train one learned codec with its objective; save its checkpoint.

A codec entry with `init` starts from those weights (another entry's checkpoint, a file, a zoo
file; `icmflow.codecs.initial`) instead of random ones, with fresh optimisers; the provenance
records where they came from and their SHA-256.

Under torchrun (`train.nproc` > 1: `icmflow train` relaunches itself) every process trains its
part of each batch; rank 0 alone prepares the work folder and writes the outputs. A secondary
task's entry (compressed-domain, with `primary`) trains its branch alone on the primary's
frozen codec; its checkpoint holds that codec as the primary's checkpoint does, and the branch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from icmflow.codecs.architectures import create_model
from icmflow.codecs.checkpoint import save_checkpoint
from icmflow.codecs.initial import Weights, load_initial, read_weights, zoo_file
from icmflow.core.errors import CheckpointError, MissingInputError
from icmflow.core.files import replace
from icmflow.core.locks import exclusive
from icmflow.core.resume import WorkDir, file_digest, fingerprint
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.plots import plot_training_log
from icmflow.masks.store import MaskStore
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import (
    CodecEntry,
    LearnedEntry,
    Params,
    TrainParams,
    check_initial_weights,
    check_registered,
    is_scalable,
    is_secondary,
)
from icmflow.pipeline.params.codecs import InitZoo
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.runtime.devices import resolve_device
from icmflow.runtime.distributed import Group, launch_rank, process_group
from icmflow.training.data import TrainingCrops, fits_in_memory
from icmflow.training.objectives import OBJECTIVES, Objective
from icmflow.training.targets import GroundTruth
from icmflow.training.trainer import TrainResult, TrainSettings, read_log, train_codec


def _written_args(params: Params, name: str) -> dict:
    """`objective_args` of codec `name` (learned, or a secondary task's) as params.yaml has them."""
    entry = params.codec(name)
    return dict((params.secondary if is_secondary(entry) else params.learned)(name).objective_args)


def objective_args(params: Params, paths: Paths, name: str) -> tuple[dict, list[Path]]:
    """Codec `name`'s `objective_args`, a task name (`task: <key of tasks>`) resolved to that
    task model's frozen task loss; and the files they read."""
    args = _written_args(params, name)
    if "task" not in args:
        return args, []
    from icmflow.pipeline.tasks import base_weights, task_spec
    from icmflow.vision.tasks.differentiable import load_task_loss

    task = str(args["task"])
    weights = base_weights(params, paths, task)
    spec = task_spec(params, task, weights)
    args["task"] = load_task_loss(params.task(task).backend, spec)
    return args, [weights]


def run(params: Params, paths: Paths, name: str) -> None:
    """Train codec `name`; under torchrun, the first process holds the stage's lock."""
    lock = exclusive(paths.lock("train", name), f"icmflow train {name}")
    with lock if launch_rank() == 0 else nullcontext():
        _run(params, paths, name)


def _run(params: Params, paths: Paths, name: str) -> None:
    check_registered(params)
    device = _device(params, name)  # a GPU that is not there: an error before any work
    if is_scalable(params.codec(name)):
        _run_scalable(params, paths, name, device)
        return
    if is_secondary(params.codec(name)):
        _run_secondary(params, paths, name, device)
        return
    check_initial_weights(params, [name], paths.root)
    entry, options = params.learned(name), params.training(name)
    initial, init_record = initial_weights(params, paths, name)
    dataset = PreparedDataset.load(paths.prepared_split(options.dataset, options.split))
    objective_cls = OBJECTIVES[entry.objective]
    masks = {
        kind: paths.mask_store(kind, options.dataset, options.split)
        for kind in objective_cls.mask_kinds
    }
    fingerprints = _mask_fingerprints(masks, options.dataset)
    arguments, read = objective_args(params, paths, name)
    init = init_path(params, paths, name)
    inputs = current_inputs(
        paths.root, [dataset.path, *masks.values(), *read, *([init] if init else [])]
    )
    work = _work(
        paths,
        name,
        entry,
        options,
        dataset,
        fingerprints,
        [file_digest(path) for path in read],
        init_record,
    )
    with _training_group(work, device) as group:
        model = create_model(entry.arch, seed=options.seed, **entry.model_args)
        if initial is not None:
            load_initial(model, initial)
        objective = objective_cls(lmbda=entry.lmbda, **arguments)
        objective.bind(model)
        result = _train(params, paths, name, model, objective, dataset, masks, work, group)
    if group.main:
        kept = objective.checkpoint_extra()
        _save(params, paths, name, entry, options, result, kept, init_record, inputs)
        work.discard()


MASK_STAGES = {"object": "masks", "edge": "edges"}
"""The stage that builds each kind of mask store."""


def _mask_fingerprints(masks: dict[str, Path], dataset: str) -> dict[str, str]:
    """The fingerprint of each mask store the objective reads; a missing store names the stage
    to run first."""
    for kind, path in masks.items():
        if not path.exists():
            raise MissingInputError(
                f"{path}: no {kind} mask store; run `icmflow {MASK_STAGES.get(kind, 'masks')} "
                f"{dataset}` first"
            )
    return {kind: MaskStore(path).attrs["fingerprint"] for kind, path in masks.items()}


def init_path(params: Params, paths: Paths, name: str) -> Path | None:
    """The file learned codec `name` starts from (None: random weights)."""
    init = params.learned(name).init
    if init is None:
        return None
    if isinstance(init, str):
        return paths.checkpoint(init)
    if isinstance(init, InitZoo):
        return zoo_file(init.zoo, init.quality, init.metric)[0]
    return paths.root / init.file


def initial_weights(params: Params, paths: Paths, name: str) -> tuple[Weights | None, dict]:
    """The weights codec `name` starts from (None: random) and what the provenance records of
    them: the `init` entry, the file and its SHA-256."""
    path = init_path(params, paths, name)
    if path is None:
        return None, {}
    init = params.learned(name).init
    if isinstance(init, str) and not path.is_file():
        raise MissingInputError(
            f"{path}: codec {name} starts from codec {init}, not trained yet: run "
            f"`icmflow train {init}` first (dvc repro does)"
        )
    record = {
        "from": init if isinstance(init, str) else init.model_dump(),
        "file": str(path),
        "sha256": file_digest(path),
    }
    return read_weights(path), record


def _ground_truth(
    params: Params, paths: Paths, name: str, objective: Objective, dataset: PreparedDataset
) -> GroundTruth | None:
    """The targets the crops carry for `objective` (None: none), in its task model's classes."""
    if objective.ground_truth is None:
        return None
    from icmflow.pipeline.tasks import base_weights, load_task_model

    task = str(_written_args(params, name)["task"])
    _, mapping = load_task_model(params, task, base_weights(params, paths, task), dataset)
    return GroundTruth(objective.ground_truth, mapping.to_model)


def _run_scalable(params: Params, paths: Paths, name: str, device: torch.device) -> None:
    """A scalable codec's human layer on its frozen machine layer (`icmflow.codecs.scalable`)."""
    from icmflow.codecs.checkpoint import load_codec
    from icmflow.codecs.scalable import build_scalable, save_scalable

    entry, options = params.scalable(name), params.training(name)
    machine_checkpoint = paths.checkpoint(entry.machine)
    dataset = PreparedDataset.load(paths.prepared_split(options.dataset, options.split))
    if not machine_checkpoint.is_file():
        raise MissingInputError(
            f"{machine_checkpoint}: not found; run `icmflow train {entry.machine}` first"
        )
    inputs = current_inputs(paths.root, [dataset.path, machine_checkpoint])
    work = _work(paths, name, entry, options, dataset, file_digest(machine_checkpoint))
    with _training_group(work, device) as group:
        model = build_scalable(
            load_codec(machine_checkpoint),
            entry.mode,
            entry.m,
            entry.arch,
            entry.model_args,
            seed=options.seed,
        )
        objective = OBJECTIVES[entry.objective](lmbda=entry.lmbda)
        result = _train(params, paths, name, model, objective, dataset, {}, work, group)
    if group.main:
        model, fields = _trained(result, entry, options)
        save_scalable(paths.checkpoint(name), model, machine_checkpoint, **fields)
        _write_log(params, paths, name, entry, options, inputs)
        work.discard()


def _run_secondary(params: Params, paths: Paths, name: str, device: torch.device) -> None:
    """A secondary task's branch on its primary's frozen codec (paper 004, eq. 6)."""
    from icmflow.codecs.checkpoint import load_codec, read_checkpoint
    from icmflow.codecs.compressed_domain import TASK_BRANCH, FrozenCodec

    entry, options = params.secondary(name), params.training(name)
    primary = paths.checkpoint(entry.primary)
    record = read_checkpoint(primary)
    if TASK_BRANCH not in record.get("icmflow", {}):
        raise CheckpointError(
            f"{primary}: holds no compressed-domain task branch, so it is no primary codec for "
            f"codecs.{name}; run `icmflow train {entry.primary}`"
        )
    dataset = PreparedDataset.load(paths.prepared_split(options.dataset, options.split))
    arguments, read = objective_args(params, paths, name)
    inputs = current_inputs(paths.root, [dataset.path, primary, *read])
    digests = [file_digest(path) for path in read]
    if arguments.get("gate") == "primary":
        gate = {
            key.removeprefix("gate."): value
            for key, value in record["icmflow"][TASK_BRANCH].items()
            if key.startswith("gate.")
        }
        arguments["primary_gate"] = gate
    work = _work(paths, name, entry, options, dataset, file_digest(primary), digests)
    with _training_group(work, device) as group:
        model = FrozenCodec(load_codec(primary))
        objective = OBJECTIVES[entry.objective](lmbda=record["icmflow"]["lambda"], **arguments)
        objective.bind(model)
        result = _train(params, paths, name, model, objective, dataset, {}, work, group)
    if group.main:  # the codec as trained through (not updated: its tables are the primary's)
        meta = record["icmflow"]
        extra = {
            "objective": entry.objective,
            "lambda": meta["lambda"],
            "final": result.last,
            "primary": {"codec": entry.primary, "digest": file_digest(primary)},
            **objective.checkpoint_extra(),
        }
        save_checkpoint(
            paths.checkpoint(name),
            result.model.codec.cpu(),
            arch=meta["arch"],
            model_args=meta["model_args"],
            step=options.steps,
            loss=result.last["loss"],
            optimizer=result.optimizer,
            aux_optimizer=result.aux_optimizer,
            extra=extra,
        )
        _write_log(params, paths, name, entry, options, inputs)
        work.discard()


def _work(
    paths: Paths,
    name: str,
    entry: CodecEntry,
    options: TrainParams,
    dataset: PreparedDataset,
    *inputs: object,
) -> WorkDir:
    """The work folder of codec `name`'s training, for these settings, data and other inputs
    (a rerun with any of them changed starts afresh)."""
    return WorkDir(
        paths.work("train", name),
        fingerprint(entry.model_dump(), options.model_dump(), file_digest(dataset.path), *inputs),
    )


def _device(params: Params, name: str) -> torch.device:
    """The device codec `name` trains on, the setting that gives it named in errors."""
    overridden = params.codec(name).train.device is not None
    setting = f"codecs.{name}.train.device" if overridden else "train.device"
    return resolve_device(params.training(name).device, setting)


@contextmanager
def _training_group(work: WorkDir, device: torch.device) -> Iterator[Group]:
    """This process's training group (alone without torchrun), once rank 0 has readied the
    work folder (resumed or new): every process may then read its state."""
    with process_group(device) as group:
        if group.main and not work.resume():
            work.seal()
        group.barrier()
        yield group


def _trained(
    result: TrainResult, entry: CodecEntry, options: TrainParams, kept: dict | None = None
) -> tuple[Any, dict]:
    """The trained model, updated (`update(force=True)`: its CDF tables), and the checkpoint
    fields of its training (with what the objective `kept` for the codec's use)."""
    model = result.model.cpu()
    model.update(force=True)
    extra = {"objective": entry.objective, "lambda": entry.lmbda, "final": result.last}
    return model, {
        "step": options.steps,
        "loss": result.last["loss"],
        "optimizer": result.optimizer,
        "aux_optimizer": result.aux_optimizer,
        "extra": {**extra, **(kept or {})},
    }


def _train(
    params: Params,
    paths: Paths,
    name: str,
    model: torch.nn.Module,
    objective: Objective,
    dataset: PreparedDataset,
    masks: dict,
    work: WorkDir,
    group: Group,
) -> TrainResult:
    """Train `model` on crops of `dataset` (and `masks`) with `name`'s training settings, its
    log and resumable state in `work`."""
    options = params.training(name)
    crops = TrainingCrops(
        dataset,
        masks,
        options.patch_size,
        cache=_cache(options, dataset, masks),
        targets=_ground_truth(params, paths, name, objective, dataset),
    )
    return train_codec(
        model,
        objective,
        crops,
        _settings(options, group),
        log_path=work.path / "train_log.csv",
        state_path=work.path / "state.pt",
        group=group,
    )


def _cache(options: TrainParams, dataset: PreparedDataset, masks: dict) -> bool:
    if options.cache_images == "auto":
        return fits_in_memory(dataset, len(masks))
    return options.cache_images


def _settings(options: TrainParams, group: Group) -> TrainSettings:
    return TrainSettings(
        steps=options.steps,
        batch_size=options.batch_size,
        lr=options.lr,
        aux_lr=options.aux_lr,
        clip_max_norm=options.clip_max_norm,
        lr_schedule=options.lr_schedule,
        lr_milestones=tuple(options.lr_milestones),
        lr_poly_power=options.lr_poly_power,
        lr_poly_start=options.lr_poly_start,
        seed=options.seed,
        num_workers=options.num_workers,
        device=str(group.device),
        channels_last=options.channels_last,
        precision=options.precision,
        save_every=options.save_every,
    )


def _save(
    params: Params,
    paths: Paths,
    name: str,
    entry: LearnedEntry,
    options: TrainParams,
    result: TrainResult,
    kept: dict,
    init: dict,
    inputs: dict[str, str],
) -> None:
    """The checkpoint (after `update(force=True)`), the log and its plot, the provenance."""
    model, fields = _trained(result, entry, options, kept)
    save_checkpoint(
        paths.checkpoint(name), model, arch=entry.arch, model_args=entry.model_args, **fields
    )
    _write_log(params, paths, name, entry, options, inputs, init)


def _write_log(
    params: Params,
    paths: Paths,
    name: str,
    entry: CodecEntry,
    options: TrainParams,
    inputs: dict[str, str],
    init: dict | None = None,
) -> None:
    """The training log and its plot beside the checkpoint, and the provenance (the inputs'
    digests, and where the initial weights came from, when not random)."""
    replace(paths.work("train", name) / "train_log.csv", paths.train_log(name))
    plot_training_log(
        read_log(paths.train_log(name)), paths.model(name) / "train_log.png", f"train@{name}"
    )
    recorded = {"codec": {name: entry.model_dump()}, "train": options.model_dump()}
    if init:
        recorded["init"] = init
    write_provenance(
        paths.model(name),
        f"train@{name}",
        recorded,
        command=command(params, "train", name),
        inputs=inputs,
    )
