"""Stage `encode@<loss>-<λ>`: a coded dataset through the codec's real entropy coder."""

from __future__ import annotations

import logging

from icmflow.coding.coded_dataset import encode_dataset
from icmflow.datasets.prepared import PreparedDataset
from icmflow.files import replace
from icmflow.parallel import dask_client
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.resume import WorkDir, file_digest, fingerprint

log = logging.getLogger(__name__)


def run(params: Params, paths: Paths, name: str) -> None:
    params.codec(name)
    options = params.encode
    dataset = PreparedDataset.load(paths.prepared_split(options.dataset, options.split))
    checkpoint = paths.checkpoint(name)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: not found; run `icmflow train {name}` first")
    work = WorkDir(
        paths.work("encode", name),
        fingerprint(file_digest(checkpoint), file_digest(dataset.path), options.device),
    )
    if not work.resume():
        work.seal()
    out = work.path / "out"
    with dask_client(options.scheduler, n_workers=options.n_workers) as client:
        summary = encode_dataset(
            checkpoint,
            dataset,
            out,
            device=options.device,
            client=client,
            images_per_task=options.images_per_task,
        )
    write_provenance(out, f"encode@{name}", {"codec": name, "encode": options.model_dump()})
    replace(out, paths.coded(name))
    work.discard()
    log.info(
        "%s: %d images, %.4f bpp (%s)",
        name,
        summary["images"],
        summary["bpp"],
        summary["bpp_definition"],
    )
