"""Stage `encode@<codec>`: a coded dataset through the codec's real bitstreams, any family."""

from __future__ import annotations

import logging

from icmflow.coding.coded_dataset import add_cityscapes_layout, encode_dataset
from icmflow.coding.image_codec import CodecSpec
from icmflow.core.errors import MissingInputError
from icmflow.core.files import replace
from icmflow.core.resume import WorkDir, file_digest, fingerprint
from icmflow.datasets.prepared import PreparedDataset
from icmflow.pipeline.params import Params, check_registered, is_learned
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.runtime.cluster import dask_client

log = logging.getLogger(__name__)


def codec_spec(params: Params, paths: Paths, name: str) -> CodecSpec:
    """What the workers build codec `name` from: its checkpoint, or its classical settings."""
    entry = params.codec(name)
    if not is_learned(entry):
        return entry.codec()
    from icmflow.coding.learned import LearnedCodecSpec  # PyTorch: learned codecs only

    check_registered(params)
    checkpoint = paths.checkpoint(name)
    if not checkpoint.is_file():
        raise MissingInputError(f"{checkpoint}: not found; run `icmflow train {name}` first")
    return LearnedCodecSpec(str(checkpoint), file_digest(checkpoint), params.encode.device)


def run(params: Params, paths: Paths, name: str) -> None:
    options = params.encode
    names = [options.split]
    if options.train_split and name in params.finetuned_codecs:
        names.append(options.train_split)
    splits = {
        split: PreparedDataset.load(paths.prepared_split(options.dataset, split)) for split in names
    }
    spec = codec_spec(params, paths, name)
    digests = [file_digest(dataset.path) for dataset in splits.values()]
    work = WorkDir(paths.work("encode", name), fingerprint(spec, *digests))
    if not work.resume():
        work.seal()
    out = work.path / "out"
    # splits are coded one after the other: the parallel work is the largest split's tasks
    tasks = max(-(-len(d.images) // options.images_per_task) for d in splits.values())
    with dask_client(options.scheduler, n_workers=options.n_workers, tasks=tasks) as client:
        summaries = encode_dataset(
            spec, splits, out, client=client, images_per_task=options.images_per_task
        )
    source = params.dataset(options.dataset)
    if source.format == "cityscapes":  # also in the layout Cityscapes tools read
        for split in splits:
            add_cityscapes_layout(out, split, source.split_paths(split)[0])
    write_provenance(
        out,
        f"encode@{name}",
        {"codec": {name: params.codec(name).model_dump()}, "encode": options.model_dump()},
    )
    replace(out, paths.coded(name))
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
