"""Checks of codec and task entries against the registries of architectures, objectives and
task backends.

Importing those registries imports PyTorch and CompressAI (seconds per process), so these checks
run where the registries are used anyway: in `icmflow pipeline` (the first stage of every
`dvc repro` after params.yaml changes) and in the stages that build learned codecs. The initial
weights of learned codecs (`init`) are read and checked by `icmflow pipeline` and train@ only.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path

from icmflow.pipeline.params.codecs import (
    InitZoo,
    LearnedEntry,
    is_compressed_domain,
    is_learned,
    is_scalable,
    is_secondary,
)
from icmflow.pipeline.params.consistency import Problem, unannotated
from icmflow.pipeline.params.project import Params, ParamsError


def registered_problems(params: Params) -> list[Problem]:
    from icmflow.codecs.architectures import image_architectures, model_args_problem
    from icmflow.training.objectives import OBJECTIVES

    problems: list[Problem] = []
    for name in params.learned_codecs:
        entry, key = params.learned(name), f"codecs.{name}"
        if entry.arch not in image_architectures():
            problems.append(
                (
                    f"{key}.arch",
                    f"unknown architecture {entry.arch!r}; registered: "
                    f"{', '.join(image_architectures())}",
                )
            )
        elif problem := model_args_problem(entry.arch, entry.model_args):
            problems.append((f"{key}.model_args", problem))
        if entry.objective not in OBJECTIVES:
            problems.append(
                (
                    f"{key}.objective",
                    f"unknown objective {entry.objective!r}; registered: {', '.join(OBJECTIVES)}",
                )
            )
            continue
        objective = OBJECTIVES[entry.objective]
        try:
            inspect.signature(objective).bind(lmbda=entry.lmbda, **entry.objective_args)
        except TypeError as err:
            problems.append((f"{key}.objective_args", f"{entry.objective}: {err}"))
        dataset = params.training(name).dataset
        if unannotated(params, dataset) and (needs := _annotations_needed(objective, entry)):
            problems.append(
                (
                    f"{key}.objective",
                    f"{entry.objective} trains on {needs}, but its training dataset {dataset!r} "
                    "has no annotations (format images): train it on an annotated dataset, or "
                    "use an objective without them (mse, edge)",
                )
            )
        if "edge" in objective.mask_kinds and dataset not in params.edges.datasets:
            problems.append(
                (
                    f"{key}.objective",
                    f"{entry.objective} trains on the edge masks of dataset {dataset!r}, but "
                    f"edges.datasets does not list it: add it (edges: {{datasets: [{dataset}]}}) "
                    "and set sam.checkpoint",
                )
            )
    return problems


def _annotations_needed(objective: type, entry: LearnedEntry) -> str | None:
    """What of a dataset's annotations the objective of `entry` reads, or None."""
    if "object" in objective.mask_kinds:
        return "object masks (made from annotations)"
    targets = inspect.signature(objective).parameters.get("targets")
    if targets is not None and entry.objective_args.get("targets", targets.default) == (
        "ground-truth"
    ):
        return "ground-truth targets (objective_args.targets)"
    return None


def task_problems(params: Params) -> list[Problem]:
    from icmflow.vision.tasks.base import TASK_BACKENDS

    problems: list[Problem] = []
    for name, task in params.tasks.items():
        if task.backend not in TASK_BACKENDS:
            problems.append(
                (
                    f"tasks.{name}.backend",
                    f"unknown task backend {task.backend!r}; "
                    f"registered: {', '.join(TASK_BACKENDS)}",
                )
            )
        elif task.kind not in (kinds := TASK_BACKENDS[task.backend].kinds):
            problems.append(
                (
                    f"tasks.{name}.kind",
                    f"backend {task.backend} has no {task.kind} models "
                    f"({', '.join(sorted(kinds))})",
                )
            )
    return problems


def scalable_registry_problems(params: Params) -> list[Problem]:
    """Scalable entries whose machine layer is not channel-sliced, whose m exceeds its
    num_slices, or whose human-layer settings do not fit."""
    from icmflow.codecs.architectures import image_architectures
    from icmflow.codecs.scalable import human_layer_problem, is_channel_sliced, slice_count

    problems: list[Problem] = []
    for name, entry in params.codecs.items():
        machine = params.codecs.get(getattr(entry, "machine", ""))
        if not is_scalable(entry) or not is_learned(machine):
            continue  # the machine's own entry problems are reported for it
        key = f"codecs.{name}"
        if machine.arch not in image_architectures() or not is_channel_sliced(machine.arch):
            problems.append(
                (
                    f"{key}.machine",
                    f"{entry.machine!r} has arch {machine.arch!r}, which is not channel-sliced: "
                    "the machine layer needs TCM's slices (arch tcm)",
                )
            )
            continue
        if entry.mode == "dc" and entry.arch not in image_architectures():
            problems.append((f"{key}.arch", f"unknown architecture {entry.arch!r}"))
            continue
        slices = slice_count(machine.arch, machine.model_args)
        problem = human_layer_problem(entry.mode, entry.arch, entry.m, slices, entry.model_args)
        if problem:
            field = "m" if problem.startswith("m=") else "model_args"
            problems.append((f"{key}.{field}", f"{problem} (machine {entry.machine!r})"))
    return problems


COMPRESSED_DOMAIN_ARCHS = ("bmshj2018-hyperprior", "mbt2018-mean")
"""The codecs of compressed-domain entries: hyperpriors without context model, whose latent
channels code on their own given ẑ, so a subset of them has a bitstream of its own."""


def compressed_domain_problems(params: Params) -> list[Problem]:
    """Compressed-domain entries on another codec, whose task has no ResNet tail, or (secondary
    tasks) whose objective_args their objective does not take."""
    from icmflow.training.objectives import OBJECTIVES

    problems: list[Problem] = []
    for name, entry in params.codecs.items():
        if not is_compressed_domain(entry):
            continue
        key = f"codecs.{name}"
        if is_secondary(entry):
            try:  # λ: the primary's, which the secondary task's loss does not read
                inspect.signature(OBJECTIVES[entry.objective]).bind(
                    lmbda=1.0, **entry.objective_args
                )
            except TypeError as err:
                problems.append((f"{key}.objective_args", f"{entry.objective}: {err}"))
        elif entry.arch not in COMPRESSED_DOMAIN_ARCHS:
            problems.append(
                (
                    f"{key}.arch",
                    f"{entry.arch!r}: a compressed-domain codec is a "
                    f"{' or '.join(COMPRESSED_DOMAIN_ARCHS)} (a hyperprior without context model)",
                )
            )
        task = params.tasks.get(entry.machine_task)
        arch = str(task.options.get("arch", "")) if task is not None else ""
        if task is not None and (task.backend != "torchvision" or "resnet" not in arch):
            problems.append(
                (
                    f"{key}.objective_args.task",
                    f"task {entry.machine_task!r} is {task.backend} {arch or task.kind}: the "
                    "compressed-domain branch needs a torchvision DeepLabV3 or Faster R-CNN on "
                    "a ResNet (options.arch deeplabv3_resnet*, fasterrcnn_resnet*)",
                )
            )
    return problems


def check_registered(params: Params) -> None:
    """Raise a `ParamsError` listing every entry the registries refuse."""
    problems = registered_problems(params) + task_problems(params)
    problems += scalable_registry_problems(params) + compressed_domain_problems(params)
    _raise(params, problems)


def _raise(params: Params, problems: list[Problem]) -> None:
    if problems:
        lines = [f"  {key}: {message}" for key, message in problems]
        raise ParamsError(f"{params.source} is invalid:\n" + "\n".join(lines))


def _init_file_problem(params: Params, name: str, root: Path) -> str | None:
    """Why the file codec `name` starts from is missing or does not fit its model."""
    from icmflow.codecs.architectures import create_model
    from icmflow.codecs.initial import fit_problem, read_weights, zoo_file, zoo_model_args
    from icmflow.core.errors import CheckpointError

    entry = params.learned(name)
    hint = ""
    if isinstance(entry.init, InitZoo):
        zoo = entry.init
        try:
            path, url = zoo_file(zoo.zoo, zoo.quality, zoo.metric)
        except ValueError as err:
            return str(err)
        if not path.is_file():
            return (
                f"the zoo file {path.name} is not in the torch hub cache (icmflow never "
                f"downloads): fetch {url} by hand and put it at {path}"
            )
        hint = f" (quality {zoo.quality} has model_args {zoo_model_args(zoo.zoo, zoo.quality)})"
    else:
        path = root / entry.init.file
    try:
        weights = read_weights(path)
    except CheckpointError as err:
        return str(err)
    problem = fit_problem(create_model(entry.arch, **entry.model_args), weights)
    if problem:
        return (
            f"{path} does not fit codecs.{name} ({entry.arch}, model_args "
            f"{entry.model_args}): {problem}{hint}"
        )
    return None


def _init_entry_problem(params: Params, name: str) -> str | None:
    """Why codec `name`'s model has other tensors than the entry it starts from."""
    from icmflow.codecs.architectures import create_model, model_args_problem
    from icmflow.codecs.initial import fit_problem

    entry = params.learned(name)
    base = params.learned(str(entry.init))
    if base.model_args == entry.model_args or model_args_problem(base.arch, base.model_args):
        return None  # the same tensors, or registered_problems names the base's arguments
    problem = fit_problem(
        create_model(entry.arch, **entry.model_args),
        create_model(base.arch, **base.model_args).state_dict(),
    )
    if problem is None:
        return None
    return (
        f"codecs.{name} (model_args {entry.model_args}) cannot start from codecs.{entry.init} "
        f"(model_args {base.model_args}): {problem}"
    )


def init_weight_problems(
    params: Params, names: Iterable[str], root: Path = Path(".")
) -> list[Problem]:
    """Learned codecs among `names` whose initial weights (`init`) do not fit their model: a
    base entry whose model_args give other tensors, a file (relative to the project `root`) or
    zoo file that is missing, unreadable or of other tensors. Reads those files: `icmflow
    pipeline` and train@ check them."""
    from icmflow.codecs.architectures import image_architectures, model_args_problem

    problems: list[Problem] = []
    for name in names:
        entry = params.codec(name)
        if not is_learned(entry) or entry.init is None:
            continue
        if entry.arch not in image_architectures() or model_args_problem(
            entry.arch, entry.model_args
        ):
            continue  # registered_problems names it
        if entry.init_entry is not None:
            problem = _init_entry_problem(params, name)
        else:
            problem = _init_file_problem(params, name, root)
        if problem:
            problems.append((f"codecs.{name}.init", problem))
    return problems


def check_initial_weights(params: Params, names: Iterable[str], root: Path = Path(".")) -> None:
    """Raise a `ParamsError` naming every codec among `names` whose `init` does not fit."""
    _raise(params, init_weight_problems(params, names, root))
