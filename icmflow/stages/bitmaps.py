"""Stage `bitmaps@<first>-vs-<second>`: bit-allocation heat maps of two learned codecs."""

from __future__ import annotations

from icmflow.codecs.checkpoint import load_codec
from icmflow.core.errors import MissingInputError
from icmflow.core.files import atomic_directory
from icmflow.datasets.images import read_rgb
from icmflow.evaluation.bit_allocation import write_bit_maps
from icmflow.pipeline.coded_sets import load_originals
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
    dataset = load_originals(paths, params.coded_set(), options.split)
    inputs = current_inputs(
        paths.root, [dataset.path, paths.checkpoint(first), paths.checkpoint(second)]
    )
    images = [
        (
            str(image["file_name"]).rsplit(".", 1)[0].replace("/", "_"),
            read_rgb(dataset.image_path(image)),
        )
        for image in dataset.images[: params.bit_maps.images]
    ]
    with atomic_directory(paths.bit_maps(f"{first}-vs-{second}")) as out:
        write_bit_maps(models, images, out)
        write_provenance(
            out,
            f"bitmaps@{first}-vs-{second}",
            {"bit_maps": params.bit_maps.model_dump(), "encode": options.model_dump()},
            command=command(params, "bitmaps", first, second),
            inputs=inputs,
        )
