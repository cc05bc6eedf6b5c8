"""Stage `evaluate@<codec>`: bpp, PSNR, object-region PSNR and MS-SSIM of one coded dataset."""

from __future__ import annotations

from icmflow.coding.coded_dataset import coded_split, read_bytes_per_image
from icmflow.core.files import atomic_directory, write_csv, write_json
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.evaluate import evaluate_coded
from icmflow.masks.store import MaskStore
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance


def run(params: Params, paths: Paths, name: str) -> None:
    entry, options = params.codec(name), params.encode
    coded_dir = paths.coded(name)
    rows, summary = evaluate_coded(
        PreparedDataset.load(paths.prepared_split(options.dataset, options.split)),
        PreparedDataset.load(coded_split(coded_dir, options.split)),
        MaskStore(paths.mask_store("object", options.dataset, options.split)),
        read_bytes_per_image(coded_dir, options.split),
    )
    with atomic_directory(paths.metrics(name)) as out:
        write_csv(out / "per_image.csv", rows, list(rows[0]) if rows else [])
        write_json(out / "metrics.json", {"codec": name, **summary})
        write_provenance(
            out,
            f"evaluate@{name}",
            {
                "codec": {name: entry.model_dump()},
                "encode": {"dataset": options.dataset, "split": options.split},
            },
        )
