"""Stage `finetune@<codec>-<task>`: fine-tune a task model on a codec's coded training split,
then score it on the same codec's coded `encode.split`."""

from __future__ import annotations

from icmflow.coding.coded_dataset import coded_split
from icmflow.core.files import atomic_directory, remove
from icmflow.core.locks import exclusive
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import Params, ParamsError
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.tasks import backend, base_weights, task_spec
from icmflow.stages.infer import score_model, source_dataset, source_file
from icmflow.vision.tasks.base import TrainingData, TrainSettings


def run(params: Params, paths: Paths, codec: str, task: str) -> None:
    with exclusive(paths.lock("finetune", f"{codec}-{task}"), f"icmflow finetune {codec} {task}"):
        _run(params, paths, codec, task)


def _run(params: Params, paths: Paths, codec: str, task: str) -> None:
    entry = params.task(task)
    if (codec, task) not in params.finetuned():
        raise ParamsError(f"tasks.{task}.finetune.codecs does not list {codec!r}")
    finetune, options = entry.finetune, params.encode
    assert finetune is not None and options.train_split is not None  # params validation
    data = TrainingData(coco=coded_split(paths.coded(codec), options.train_split))
    initial = base_weights(params, paths, task)
    dataset = source_dataset(params, paths, codec)
    read = [source_file(params, paths, codec, s) for s in (options.train_split, options.split)]
    inputs = current_inputs(paths.root, [*read, initial])
    settings = TrainSettings(
        epochs=finetune.epochs,
        batch_size=finetune.batch_size,
        lr=finetune.lr,
        options=finetune.options,
        initial=initial,
    )
    work = paths.work("finetune", f"{codec}-{task}")
    remove(work)
    spec = task_spec(params, task, work / "weights.pt")
    weights = backend(params, task).train(spec, data, settings, work)
    final = paths.finetuned_weights(codec, task)
    with atomic_directory(final.parent) as out:
        weights.replace(out / final.name)
    remove(work)
    score_model(
        params,
        paths,
        codec,
        task,
        final,
        paths.finetuned(codec, task),
        f"finetune@{codec}-{task}",
        {"codec": {codec: params.codec(codec).model_dump()}, "encode": options.model_dump()},
        command=command(params, "finetune", codec, task),
        inputs=inputs,
        dataset=dataset,
    )
