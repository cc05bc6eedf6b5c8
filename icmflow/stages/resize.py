"""Stage `resize@<dataset>`: the originals of a coded dataset with `resize` (`encode.resize`, or
`encode.datasets.<dataset>.resize`), resized once for every codec and every comparison.

Writes `data/resized/<dataset>/`: per split the resized images (`images/<split>/`, PNG), their
prepared JSON (`<split>.json`, annotations scaled, `icmflow.resize` recording the setting) and,
for annotated datasets, the object masks of the resized images (`object/<split>.zarr`, from the
scaled annotations as `masks` makes them). encode, evaluate, infer@original and bitmaps read
these instead of the prepared dataset and its masks.
"""

from __future__ import annotations

from icmflow.core.files import atomic_directory, remove
from icmflow.core.locks import exclusive
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.datasets.resize import resize_split
from icmflow.masks.build import build_object_masks
from icmflow.pipeline.coded_sets import coded_splits, has_objects
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import Params, ParamsError
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.runtime.cluster import dask_client


def run(params: Params, paths: Paths, dataset: str) -> None:
    coded = params.coded_set(dataset)
    if coded.resize is None:
        raise ParamsError(
            f"{params.source} {coded.key}.resize is not set: dataset {dataset!r} is coded at its "
            "own size (no resize@ stage)"
        )
    with exclusive(paths.lock("resize", dataset), f"icmflow resize {dataset}"):
        _run(params, paths, dataset)


def _run(params: Params, paths: Paths, dataset: str) -> None:
    coded = params.coded_set(dataset)
    resize = coded.resize
    assert resize is not None
    sources = {
        split: PreparedDataset.load(paths.prepared_split(dataset, split))
        for split in coded_splits(params, coded)
    }
    inputs = current_inputs(paths.root, (source.path for source in sources.values()))
    final, work = paths.resized(dataset), paths.work("resize", dataset)
    options = params.masks
    with atomic_directory(final) as out:
        resized = {}
        for split, source in sources.items():
            data = resize_split(
                source, out / "images" / split, resize.shorter_edge, workers=params.prepare.workers
            )
            data["icmflow"] = {
                **source.data["icmflow"],
                "resize": resize.model_dump(),
                "resized_from": str(source.path),
            }
            write_prepared(
                out / f"{split}.json", data, image_root=final / "images" / split, final_dir=final
            )
            resized[split] = data
        if has_objects(params, coded):
            shards = sum(-(-len(d["images"]) // options.images_per_shard) for d in resized.values())
            with dask_client(
                options.scheduler,
                n_workers=options.n_workers,
                threads_per_worker=options.threads_per_worker,
                tasks=shards,
                setting="masks.scheduler",
            ) as client:
                for split, data in resized.items():
                    build_object_masks(
                        data,
                        out / "object" / f"{split}.zarr",
                        work=work / split,
                        source=str(final / f"{split}.json"),
                        include_crowd=options.crowd == "include",
                        images_per_shard=options.images_per_shard,
                        client=client,
                    )
        write_provenance(
            out,
            f"resize@{dataset}",
            {"resize": resize.model_dump(), "splits": list(sources), "masks": options.model_dump()},
            command=command(params, "resize", dataset),
            inputs=inputs,
        )
    remove(work)
