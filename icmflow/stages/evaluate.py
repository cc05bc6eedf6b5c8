"""Stage `evaluate@<codec>`: bpp, PSNR, object-region PSNR and MS-SSIM of one coded dataset."""

from __future__ import annotations

import math

from icmflow.coding.coded_dataset import coded_split, read_bytes_per_image
from icmflow.core.files import atomic_directory, write_csv, write_json
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.evaluate import evaluate_coded
from icmflow.masks.store import MaskStore
from icmflow.pipeline.params import Params, is_scalable
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance

LAYER_DEFINITIONS = {
    "bpp": "both layers: total bits of the machine- and additional-layer files / total pixels",
    "machine_bpp": "the machine layer's files (the machine codec's coded dataset) / pixels",
    "additional_bpp": "the additional layer's files (this coded dataset's bitstreams) / pixels",
}
"""A scalable codec's rates: its human images need both layers' files."""


def run(params: Params, paths: Paths, name: str) -> None:
    entry, options = params.codec(name), params.encode
    coded_dir = paths.coded(name)
    sizes = read_bytes_per_image(coded_dir, options.split)
    if is_scalable(entry):  # bpp: both layers; the additional layer's alone beside it
        from icmflow.coding.layered import layer_bytes, read_layers

        layers = layer_bytes(paths.coded(entry.machine), coded_dir, options.split)
        sizes = {image_id: size["total"] for image_id, size in layers.items()}
    source = PreparedDataset.load(paths.prepared_split(options.dataset, options.split))
    masks = (  # a dataset without annotations has no object masks: no object PSNR
        MaskStore(paths.mask_store("object", options.dataset, options.split))
        if params.dataset(options.dataset).has_annotations
        else None
    )
    rows, summary = evaluate_coded(
        source, PreparedDataset.load(coded_split(coded_dir, options.split)), masks, sizes
    )
    if is_scalable(entry):
        summary |= _layer_rates(source, rows, layers) | {"layers": read_layers(coded_dir)}
        summary["definitions"] = {**summary["definitions"], **LAYER_DEFINITIONS}
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


def _layer_rates(
    source: PreparedDataset, rows: list[dict], layers: dict[int, dict[str, int]]
) -> dict[str, float]:
    """Each layer's bytes and bpp added to the rows; each layer's bpp over all images."""
    pixels = {image["id"]: image["width"] * image["height"] for image in source.images}
    summary = {}
    for layer in ("machine", "additional"):
        for row in rows:
            row[f"{layer}_bytes"] = layers[row["image_id"]][layer]
            row[f"{layer}_bpp"] = 8 * row[f"{layer}_bytes"] / pixels[row["image_id"]]
        bits = 8 * sum(row[f"{layer}_bytes"] for row in rows)
        summary[f"{layer}_bpp"] = bits / sum(pixels.values()) if pixels else math.nan
    return summary
