"""Stage `bitmaps@<first>-vs-<second>`: bit-allocation heat maps of two learned codecs, and their
bits inside and outside the object masks where `encode.dataset` has annotations."""

from __future__ import annotations

from icmflow.codecs.checkpoint import load_codec
from icmflow.core.errors import MissingInputError
from icmflow.core.files import atomic_directory
from icmflow.datasets.images import read_rgb
from icmflow.evaluation.bit_allocation import write_bit_maps
from icmflow.masks.store import MaskStore
from icmflow.pipeline.coded_sets import has_objects, load_originals, object_masks
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import Params, ParamsError, check_registered
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance


def run(params: Params, paths: Paths, first: str, second: str) -> None:
    check_registered(params)
    if (first, second) not in params.bit_map_pairs().values():
        raise ParamsError(f"[{first}, {second}] is not listed in {params.source} bit_maps.pairs")
    models = {}
    for name in (first, second):
        checkpoint = paths.checkpoint(name)
        if not checkpoint.is_file():
            raise MissingInputError(f"{checkpoint}: not found; run `icmflow train {name}` first")
        models[name] = load_codec(checkpoint)
    options = params.encode
    coded = params.coded_set()
    dataset = load_originals(paths, coded, options.split)
    chosen = dataset.images[: params.bit_maps.images]
    stems = [str(image["file_name"]).rsplit(".", 1)[0].replace("/", "_") for image in chosen]
    images = [(s, read_rgb(dataset.image_path(i))) for s, i in zip(stems, chosen, strict=True)]
    read = [dataset.path, paths.checkpoint(first), paths.checkpoint(second)]
    masks = None  # bits inside and outside objects, where the dataset has object masks
    if has_objects(params, coded):
        store_path = object_masks(paths, coded, options.split)
        store = MaskStore(store_path)
        masks = {s: store.mask(i["id"]) for s, i in zip(stems, chosen, strict=True)}
        read.append(store_path)
    inputs = current_inputs(paths.root, read)
    with atomic_directory(paths.bit_maps(f"{first}-vs-{second}")) as out:
        write_bit_maps(models, images, out, masks)
        write_provenance(
            out,
            f"bitmaps@{first}-vs-{second}",
            {"bit_maps": params.bit_maps.model_dump(), "encode": options.model_dump()},
            command=command(params, "bitmaps", first, second),
            inputs=inputs,
        )
