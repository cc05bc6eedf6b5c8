"""Stage `evaluate@<codec>`: bpp, PSNR, object-region PSNR and MS-SSIM of one coded dataset.

With `--dataset` (stage `evaluate-<dataset>@<codec>`), the coded dataset of a dataset of
`encode.datasets`; a dataset without annotations has no object PSNR. Originals and object masks
are the resized ones where the coded dataset has `resize`.
"""

from __future__ import annotations

import math

from icmflow.coding.coded_dataset import coded_split, read_bytes_per_image
from icmflow.core.files import atomic_directory, write_csv, write_json
from icmflow.datasets.prepared import PreparedDataset
from icmflow.evaluation.evaluate import evaluate_coded
from icmflow.masks.store import MaskStore
from icmflow.pipeline.coded_sets import (
    arguments,
    has_objects,
    load_originals,
    object_masks,
    stage_name,
)
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import Params, ParamsError, is_scalable
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance

LAYER_DEFINITIONS = {
    "bpp": "both layers: total bits of the machine- and additional-layer files / total pixels",
    "machine_bpp": "the machine layer's files (the machine codec's coded dataset) / pixels",
    "additional_bpp": "the additional layer's files (this coded dataset's bitstreams) / pixels",
}
"""A scalable codec's rates: its human images need both layers' files."""


def run(params: Params, paths: Paths, name: str, dataset: str | None = None) -> None:
    entry, coded = params.codec(name), params.coded_set(dataset)
    if name not in coded.codecs:
        raise ParamsError(f"{params.source} {coded.key}.codecs does not list codec {name!r}")
    split = coded.split
    coded_dir = paths.coded(name, coded.on)
    sizes = read_bytes_per_image(coded_dir, split)
    read = [coded_dir / "bpp" / f"{split}.csv"]
    if is_scalable(entry):  # bpp: both layers; the additional layer's alone beside it
        from icmflow.coding.layered import layer_bytes, read_layers

        machine_dir = paths.coded(entry.machine, coded.on)
        layers = layer_bytes(machine_dir, coded_dir, split)
        sizes = {image_id: size["total"] for image_id, size in layers.items()}
        read.append(machine_dir / "bpp" / f"{split}.csv")
    source = load_originals(paths, coded, split)
    read.append(source.path)
    masks = None  # a dataset without annotations has no object masks: no object PSNR
    if has_objects(params, coded):
        masks = MaskStore(object_masks(paths, coded, split))
        read.append(object_masks(paths, coded, split))
    inputs = current_inputs(paths.root, read)
    rows, summary = evaluate_coded(
        source, PreparedDataset.load(coded_split(coded_dir, split)), masks, sizes
    )
    if is_scalable(entry):
        summary |= _layer_rates(source, rows, layers) | {"layers": read_layers(coded_dir)}
        summary["definitions"] = {**summary["definitions"], **LAYER_DEFINITIONS}
    if coded.resize is not None:
        summary["resize"] = coded.resize.model_dump()
    with atomic_directory(paths.metrics(name, coded.on)) as out:
        write_csv(out / "per_image.csv", rows, list(rows[0]) if rows else [])
        write_json(out / "metrics.json", {"codec": name, **summary})
        recorded = {"dataset": coded.dataset, "split": split}
        if coded.resize is not None:
            recorded["resize"] = coded.resize.model_dump()
        write_provenance(
            out,
            stage_name("evaluate", name, coded),
            {"codec": {name: entry.model_dump()}, "encode": recorded},
            command=command(params, "evaluate", *arguments(name, coded)),
            inputs=inputs,
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
