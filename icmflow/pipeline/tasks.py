"""Task models as params.yaml `tasks` describes them: specs, weights, class mappings."""

from __future__ import annotations

from pathlib import Path

from icmflow.core.errors import CheckpointError
from icmflow.datasets.prepared import PreparedDataset
from icmflow.pipeline.params import Params, check_registered
from icmflow.pipeline.paths import Paths
from icmflow.runtime.devices import resolve_device
from icmflow.tasks.classes import ClassMapping, class_mapping, foreground_mapping
from icmflow.tasks.semantic import SemanticTruth, cityscapes_truth, instance_truth
from icmflow.vision.tasks.base import TASK_BACKENDS, TaskBackend, TaskModel, TaskModelSpec


def backend(params: Params, name: str) -> TaskBackend:
    check_registered(params)
    return TASK_BACKENDS[params.task(name).backend]


def base_weights(params: Params, paths: Paths, name: str) -> Path:
    """The task's own weights: its `weights` file, or what `task@<name>` trained."""
    entry = params.task(name)
    if entry.weights is not None:
        weights = Path(entry.weights)
        if not weights.is_file():
            raise CheckpointError(
                f"{weights}: task {name}'s weights file ({params.source} tasks.{name}.weights) is "
                "not there; put the file there (icmflow never downloads weights) or fix the path"
            )
        return weights
    weights = paths.task_weights(name)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: not found; run `icmflow task {name}` first")
    return weights


def task_spec(params: Params, name: str, weights: Path) -> TaskModelSpec:
    entry = params.task(name)
    return TaskModelSpec(
        kind=entry.kind,
        weights=weights,
        input_size=entry.input_size,
        device=str(resolve_device(entry.device, f"tasks.{name}.device")),
        options=entry.options,
    )


def load_task_model(
    params: Params,
    name: str,
    weights: Path,
    dataset: PreparedDataset,
    categories: list[dict] | None = None,
) -> tuple[TaskModel, ClassMapping]:
    """The model and its mapping onto `categories` (default: `dataset`'s), both checked
    before any image."""
    model = backend(params, name).load(task_spec(params, name, weights))
    if params.task(name).kind == "foreground":
        return model, foreground_mapping(dataset.data["categories"])
    explicit = params.task(name).classes
    categories = dataset.data["categories"] if categories is None else categories
    return model, class_mapping(categories, model.class_names, explicit)


def semantic_truth(params: Params, name: str, dataset: PreparedDataset) -> SemanticTruth | None:
    """What task `name`'s semantic maps of `dataset` (an `encode.split`, original or coded)
    are scored against: Cityscapes' 19 classes from the source's gtFine labelIds when
    `encode.dataset` is Cityscapes, else the annotations rasterised; None for other kinds."""
    if params.task(name).kind != "semantic_segmentation":
        return None
    source = params.dataset(params.encode.dataset)
    if source.format == "cityscapes":
        return cityscapes_truth(source.split_paths(params.encode.split)[0])
    return instance_truth(dataset)


def machine_codec(params: Params, paths: Paths, codec: str, device: str = "cpu"):
    """Compressed-domain codec `codec`'s trained checkpoint with its task's branch, for coding
    and reading its machine bitstreams (`icmflow.coding.machine`)."""
    from icmflow.coding.machine import load_machine_codec
    from icmflow.vision.tasks.torchvision_backend import load_model

    check_registered(params)
    task = params.compressed_domain(codec).machine_task
    weights = base_weights(params, paths, task)
    network = load_model(task_spec(params, task, weights), weights)
    foreground = params.task(task).kind == "foreground"
    return load_machine_codec(paths.checkpoint(codec), network, task, device, foreground=foreground)
