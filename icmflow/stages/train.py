"""Stage `train@<codec>`: train one learned codec with its objective; save its checkpoint."""

from __future__ import annotations

from icmflow.codecs.architectures import create_model
from icmflow.codecs.checkpoint import save_checkpoint
from icmflow.core.files import replace
from icmflow.core.resume import WorkDir, file_digest, fingerprint
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.plots import plot_training_log
from icmflow.masks.store import store_attrs
from icmflow.pipeline.params import Params, check_registered
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.runtime.devices import resolve_device
from icmflow.training.data import TrainingCrops
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.trainer import TrainSettings, read_log, train_codec


def run(params: Params, paths: Paths, name: str) -> None:
    check_registered(params)
    entry, options = params.learned(name), params.training(name)
    dataset = PreparedDataset.load(paths.prepared_split(options.dataset, options.split))
    objective_cls = OBJECTIVES[entry.objective]
    masks = {
        kind: paths.mask_store(kind, options.dataset, options.split)
        for kind in objective_cls.mask_kinds
    }
    work = WorkDir(
        paths.work("train", name),
        fingerprint(
            entry.model_dump(),
            options.model_dump(),
            file_digest(dataset.path),
            {kind: store_attrs(path)["fingerprint"] for kind, path in masks.items()},
        ),
    )
    if not work.resume():
        work.seal()
    settings = TrainSettings(
        steps=options.steps,
        batch_size=options.batch_size,
        lr=options.lr,
        aux_lr=options.aux_lr,
        clip_max_norm=options.clip_max_norm,
        lr_milestones=tuple(options.lr_milestones),
        seed=options.seed,
        num_workers=options.num_workers,
        device=str(resolve_device(options.device)),
        channels_last=options.channels_last,
        save_every=options.save_every,
    )
    result = train_codec(
        create_model(entry.arch, seed=options.seed, **entry.model_args),
        objective_cls(lmbda=entry.lmbda, **entry.objective_args),
        TrainingCrops(dataset, masks, options.patch_size, cache=options.cache_images),
        settings,
        log_path=work.path / "train_log.csv",
        state_path=work.path / "state.pt",
    )
    model = result.model.cpu()
    model.update(force=True)
    save_checkpoint(
        paths.checkpoint(name),
        model,
        arch=entry.arch,
        model_args=entry.model_args,
        step=options.steps,
        loss=result.last["loss"],
        optimizer=result.optimizer,
        aux_optimizer=result.aux_optimizer,
        extra={"objective": entry.objective, "lambda": entry.lmbda, "final": result.last},
    )
    replace(work.path / "train_log.csv", paths.train_log(name))
    plot_training_log(
        read_log(paths.train_log(name)), paths.model(name) / "train_log.png", f"train@{name}"
    )
    write_provenance(
        paths.model(name),
        f"train@{name}",
        {"codec": {name: entry.model_dump()}, "train": options.model_dump()},
    )
    work.discard()
