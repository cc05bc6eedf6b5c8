"""Stage `encode@<loss>-<λ>`: a coded dataset through the codec's real entropy coder."""

from __future__ import annotations

import logging

from icmflow.coding.checkpoint import load_codec
from icmflow.coding.coded_dataset import encode_dataset
from icmflow.datasets.prepared import PreparedDataset
from icmflow.files import atomic_directory
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance

log = logging.getLogger(__name__)


def run(params: Params, paths: Paths, name: str) -> None:
    params.codec(name)
    options = params.encode
    dataset = PreparedDataset.load(paths.prepared_split(options.dataset, options.split))
    model = load_codec(paths.checkpoint(name)).to(options.device)
    with atomic_directory(paths.coded(name)) as out:
        summary = encode_dataset(model, dataset, out)
        write_provenance(out, f"encode@{name}", {"codec": name, "encode": options.model_dump()})
    log.info(
        "%s: %d images, %.4f bpp (%s)",
        name,
        summary["images"],
        summary["bpp"],
        summary["bpp_definition"],
    )
