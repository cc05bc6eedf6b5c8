"""Stage `finetune@<codec>-<task>`: fine-tune a task model on a codec's coded training split,
then score it on the same codec's coded `encode.split`."""

from __future__ import annotations

from icmflow.coding.coded_dataset import coded_split
from icmflow.core.files import atomic_directory, remove, write_json
from icmflow.pipeline.params import Params, ParamsError
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.pipeline.tasks import backend, base_weights, load_task_model, task_spec
from icmflow.stages.infer import source_dataset
from icmflow.tasks.accuracy import predict_dataset, score_predictions
from icmflow.vision.tasks.base import TrainingData, TrainSettings


def run(params: Params, paths: Paths, codec: str, task: str) -> None:
    entry = params.task(task)
    if (codec, task) not in params.finetuned():
        raise ParamsError(f"tasks.{task}.finetune.codecs does not list {codec!r}")
    finetune, options = entry.finetune, params.encode
    assert finetune is not None and options.train_split is not None  # params validation
    coded = paths.coded(codec)
    data = TrainingData(coco=coded_split(coded, options.train_split), yolo_yaml=coded / "data.yaml")
    settings = TrainSettings(
        epochs=finetune.epochs,
        batch_size=finetune.batch_size,
        lr=finetune.lr,
        initial=base_weights(params, paths, task),
    )
    work = paths.work("finetune", f"{codec}-{task}")
    remove(work)
    spec = task_spec(params, task, work / "weights.pt")
    weights = backend(params, task).train(spec, data, settings, work)
    final = paths.finetuned_weights(codec, task)
    with atomic_directory(final.parent) as out:
        weights.replace(out / final.name)
    remove(work)
    dataset = source_dataset(params, paths, codec)
    model, mapping = load_task_model(params, task, final, dataset)
    predictions = predict_dataset(model, dataset)
    with atomic_directory(paths.finetuned(codec, task)) as out:
        accuracy = score_predictions(entry.kind, dataset, predictions, mapping, out)
        write_json(out / "accuracy.json", {"source": codec, "task": task, **accuracy})
        write_provenance(
            out,
            f"finetune@{codec}-{task}",
            {
                "tasks": {task: entry.model_dump()},
                "codec": {codec: params.codec(codec).model_dump()},
            },
        )
