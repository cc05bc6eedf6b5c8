"""Stage `task@<task>`: train a task model on original images (for tasks with `train:`)."""

from __future__ import annotations

from icmflow.core.errors import MissingInputError
from icmflow.core.files import atomic_directory, remove
from icmflow.core.locks import exclusive
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import Params, ParamsError
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.pipeline.tasks import backend, task_spec
from icmflow.vision.tasks.base import TrainingData, TrainSettings


def run(params: Params, paths: Paths, name: str) -> None:
    with exclusive(paths.lock("task", name), f"icmflow task {name}"):
        _run(params, paths, name)


def _run(params: Params, paths: Paths, name: str) -> None:
    entry = params.task(name)
    training = entry.train
    if training is None:
        raise ParamsError(
            f"task {name!r} has weights of its own (tasks.{name}.weights): no training"
        )
    source = paths.prepared_split(training.dataset, training.split)
    if not source.is_file():
        raise MissingInputError(
            f"{source}: prepared dataset not found; run `icmflow prepare {training.dataset}`"
        )
    inputs = current_inputs(paths.root, [source])
    data = TrainingData(coco=source)
    settings = TrainSettings(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        seed=training.seed,
        model=training.model,
        options=training.options,
    )
    work = paths.work("task", name)
    remove(work)  # the library's own runs do not resume
    spec = task_spec(params, name, work / "weights.pt")
    weights = backend(params, name).train(spec, data, settings, work)
    final = paths.task_weights(name)
    with atomic_directory(final.parent) as out:
        weights.replace(out / final.name)
        write_provenance(
            out,
            f"task@{name}",
            {"tasks": {name: entry.model_dump()}},
            command=command(params, "task", name),
            inputs=inputs,
        )
    remove(work)
