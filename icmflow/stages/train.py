"""Stage `train@<loss>-<λ>`: train one codec and save its updated checkpoint."""

from __future__ import annotations

from icmflow.coding.checkpoint import save_checkpoint
from icmflow.coding.registry import create_model
from icmflow.datasets.prepared import PreparedDataset
from icmflow.devices import resolve_device
from icmflow.evaluation.plots import plot_training_log
from icmflow.files import replace
from icmflow.masks.store import store_attrs
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.resume import WorkDir, file_digest, fingerprint
from icmflow.training import MASK_OF_LOSS
from icmflow.training.data import MaskedCrops
from icmflow.training.losses import RateDistortionLoss
from icmflow.training.trainer import read_log, train_codec


def run(params: Params, paths: Paths, name: str) -> None:
    codec, options = params.codec(name), params.train
    dataset = PreparedDataset.load(paths.prepared_split(options.dataset, options.split))
    kind = MASK_OF_LOSS[codec.loss]
    masks = paths.mask_store(kind, options.dataset, options.split) if kind else None
    work = WorkDir(
        paths.work("train", name),
        fingerprint(
            codec.__dict__,
            options.model_dump(),
            file_digest(dataset.path),
            store_attrs(masks)["fingerprint"] if masks else None,
        ),
    )
    if not work.resume():
        work.seal()
    model, optimizer, aux_optimizer, last = train_codec(
        create_model(options.model, seed=options.seed, **options.model_args),
        MaskedCrops(dataset, masks, options.patch_size, cache=options.cache_images),
        RateDistortionLoss(codec.lmbda, masked=kind is not None),
        steps=options.steps,
        batch_size=options.batch_size,
        lr=options.lr,
        aux_lr=options.aux_lr,
        clip_max_norm=options.clip_max_norm,
        lr_milestones=options.lr_milestones,
        seed=options.seed,
        num_workers=options.num_workers,
        device=resolve_device(options.device),
        log_path=work.path / "train_log.csv",
        state_path=work.path / "state.pt",
        save_every=options.save_every,
    )
    model.cpu().update(force=True)
    save_checkpoint(
        paths.checkpoint(name),
        model,
        arch=options.model,
        model_args=options.model_args,
        step=options.steps,
        loss=last["loss"],
        optimizer=optimizer,
        aux_optimizer=aux_optimizer,
        extra={"loss_name": codec.loss, "lambda": codec.lmbda, "final": last},
    )
    replace(work.path / "train_log.csv", paths.train_log(name))
    plot_training_log(
        read_log(paths.train_log(name)), paths.model(name) / "train_log.png", f"train@{name}"
    )
    write_provenance(
        paths.model(name), f"train@{name}", {"codec": name, "train": options.model_dump()}
    )
    work.discard()
