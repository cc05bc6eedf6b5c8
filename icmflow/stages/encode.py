"""Stage `encode@<codec>`: a coded dataset through the codec's real bitstreams, any family.

With `--dataset` (stage `encode-<dataset>@<codec>`), the coded dataset of a dataset of
`encode.datasets` instead of `encode.dataset`'s. A coded dataset with `resize` codes the resized
originals (`resize@<dataset>`), each padded to its `pad_multiple` for the codec.
"""

from __future__ import annotations

import logging
from pathlib import Path

from icmflow.coding.coded_dataset import add_cityscapes_layout, encode_dataset
from icmflow.coding.image_codec import CodecSpec, RegionCodecSpec
from icmflow.core.errors import MissingInputError
from icmflow.core.files import remove, replace, write_json
from icmflow.core.locks import exclusive
from icmflow.core.resume import WorkDir, file_digest, fingerprint
from icmflow.core.storage import download, require_writable
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.store import store_attrs
from icmflow.pipeline.coded_sets import (
    arguments,
    coded_splits,
    load_originals,
    object_masks,
    stage_name,
)
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import (
    Params,
    ParamsError,
    check_registered,
    is_compressed_domain,
    is_roi,
    is_scalable,
    is_trained,
)
from icmflow.pipeline.params.project import CodedSet
from icmflow.pipeline.paths import Paths, shared_store
from icmflow.pipeline.provenance import write_provenance
from icmflow.runtime.cluster import dask_client
from icmflow.runtime.devices import resolve_device

log = logging.getLogger(__name__)


def codec_spec(
    params: Params, paths: Paths, name: str, coded: CodedSet | None = None
) -> CodecSpec | RegionCodecSpec:
    """What the workers build codec `name` from: its checkpoint (an ROI codec's: its codec's,
    and the object masks of the coded dataset `coded`, the primary one by default), or its
    classical settings."""
    entry = params.codec(name)
    if is_roi(entry):
        return _roi_spec(params, paths, name, coded or params.coded_set())
    if not is_trained(entry):
        return entry.codec()
    from icmflow.coding.learned import LearnedCodecSpec  # PyTorch: learned codecs only

    check_registered(params)
    resolve_device(params.encode.device, "encode.device")  # a GPU asked for must be there
    checkpoint = paths.checkpoint(name)
    if not checkpoint.is_file():
        raise MissingInputError(f"{checkpoint}: not found; run `icmflow train {name}` first")
    if is_scalable(entry):  # the additional layer, on the machine codec's checkpoint
        from icmflow.coding.layered import LayeredCodecSpec

        machine = paths.checkpoint(entry.machine)
        return LayeredCodecSpec(
            str(checkpoint),
            file_digest(checkpoint),
            str(machine),
            file_digest(machine),
            params.encode.device,
        )
    return LearnedCodecSpec(str(checkpoint), file_digest(checkpoint), params.encode.device)


def _roi_spec(params: Params, paths: Paths, name: str, coded: CodedSet) -> RegionCodecSpec:
    """ROI codec `name`: its learned codec's checkpoint, QF, and the object mask stores of the
    splits it codes (the ground-truth ROIs)."""
    from icmflow.coding.roi import RoiCodecSpec  # PyTorch: learned codecs only

    entry, dataset = params.codec(name), coded.dataset
    learned = codec_spec(params, paths, entry.codec)
    stores = {
        split: object_masks(paths, coded, split) for split in coded_splits(params, coded, name)
    }
    stage = "masks" if coded.resize is None else "resize"
    for store in stores.values():
        if not store.is_dir():
            raise MissingInputError(f"{store}: not found; run `icmflow {stage} {dataset}` first")
    return RoiCodecSpec(
        learned.checkpoint,
        learned.sha256,
        entry.qf,
        tuple((split, str(store)) for split, store in stores.items()),
        fingerprint(*(store_attrs(store)["fingerprint"] for store in stores.values())),
        params.encode.device,
    )


def _spec_inputs(params: Params, paths: Paths, name: str, coded: CodedSet) -> list[Path]:
    """The files and mask stores codec `name` codes `coded` with, besides the images."""
    entry = params.codec(name)
    if is_roi(entry):
        splits = coded_splits(params, coded, name)
        return [
            paths.checkpoint(entry.codec),
            *(object_masks(paths, coded, split) for split in splits),
        ]
    found = [paths.checkpoint(name)] if is_trained(entry) else []
    if is_scalable(entry):
        found.append(paths.checkpoint(entry.machine))
    if is_compressed_domain(entry) and coded.primary:  # its machine bitstreams: the task's
        from icmflow.pipeline.tasks import base_weights

        found.append(base_weights(params, paths, entry.machine_task))
    return found


def run(params: Params, paths: Paths, name: str, dataset: str | None = None) -> None:
    params.codec(name)  # an unknown codec: the error that says so
    coded = params.coded_set(dataset)
    if name not in coded.codecs:
        raise ParamsError(f"{params.source} {coded.key}.codecs does not list codec {name!r}")
    key = name if coded.primary else f"{name}@{coded.dataset}"
    with exclusive(paths.lock("encode", key), f"icmflow encode {' '.join(arguments(name, coded))}"):
        _run(params, paths, name, coded, paths.work("encode", key))


def _run(params: Params, paths: Paths, name: str, coded: CodedSet, work_dir: Path) -> None:
    options = params.encode
    spec = codec_spec(params, paths, name, coded)
    if params.storage.root is not None:
        require_writable(params.storage.root, "storage.root")
    splits = {
        split: load_originals(paths, coded, split) for split in coded_splits(params, coded, name)
    }
    inputs = current_inputs(
        paths.root, [*(d.path for d in splits.values()), *_spec_inputs(params, paths, name, coded)]
    )
    pad = 1 if coded.resize is None else coded.resize.pad_multiple
    digests = [file_digest(dataset.path) for dataset in splits.values()]
    work = WorkDir(work_dir, fingerprint(spec, *digests, *([pad] if pad > 1 else [])))
    if not work.resume():
        work.seal()
    out = work.path / "out"
    # with storage.root the workers write there, and the finished dataset is copied here
    root = params.storage.root
    target = out if root is None else shared_store(root, "encode", work_dir.name)
    # splits are coded one after the other: the parallel work is the largest split's tasks
    tasks = max(-(-len(d.images) // options.images_per_task) for d in splits.values())
    with dask_client(
        options.scheduler, n_workers=options.n_workers, tasks=tasks, setting="encode.scheduler"
    ) as client:
        summaries = encode_dataset(
            spec,
            splits,
            target,
            client=client,
            images_per_task=options.images_per_task,
            pad_multiple=pad,
        )
    if root is not None:
        remove(out)
        download(target, out)
    if is_scalable(entry := params.codec(name)):  # its base layer: the machine codec's dataset
        from icmflow.coding.layered import write_layers

        write_layers(out, spec, entry.machine)
    if is_compressed_domain(entry) and coded.primary:  # and its task's machine bitstreams
        _write_machine(params, paths, name, splits[options.split], out)
    source = params.dataset(coded.dataset)
    if source.format == "cityscapes":  # also in the layout Cityscapes tools read
        for split in splits:
            add_cityscapes_layout(out, split, source.split_paths(split)[0])
    write_provenance(
        out,
        stage_name("encode", name, coded),
        {"codec": {name: params.codec(name).model_dump()}, "encode": _recorded(params, coded)},
        command=command(params, "encode", *arguments(name, coded)),
        inputs=inputs,
    )
    replace(out, paths.coded(name, coded.on))
    work.discard()
    for split, summary in summaries.items():
        log.info(
            "%s %s: %d images, %.4f bpp (%s)",
            name,
            split,
            summary["images"],
            summary["bpp"],
            summary["bpp_definition"],
        )


def _recorded(params: Params, coded: CodedSet) -> dict:
    """What the provenance records of the coded dataset's settings."""
    if coded.primary:
        return params.encode.model_dump()
    entry = params.encode.datasets[coded.dataset].model_dump()
    return {"dataset": coded.dataset, **entry, "split": coded.split}


def _write_machine(
    params: Params, paths: Paths, name: str, dataset: PreparedDataset, out: Path
) -> None:
    """The machine bitstreams of compressed-domain codec `name`, in this process (the gate and
    the selected channels' entropy coding are a fraction of the human images' cost)."""
    from icmflow.coding.machine import MACHINE, write_machine_split
    from icmflow.pipeline.tasks import machine_codec

    codec = machine_codec(params, paths, name, params.encode.device)
    summary = write_machine_split(codec, dataset, out, params.encode.split)
    write_json(out / MACHINE / "summary.json", {params.encode.split: summary})
    log.info("%s machine bitstreams: %.4f bpp", name, summary["bpp"])
