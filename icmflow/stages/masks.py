"""Stage `masks@<dataset>`: object masks of every split, built on a dask cluster."""

from __future__ import annotations

from icmflow.datasets.prepared import PreparedDataset
from icmflow.files import remove, replace
from icmflow.masks.build import build_object_masks
from icmflow.parallel import dask_client
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance


def run(params: Params, paths: Paths, dataset: str) -> None:
    options = params.masks
    work = paths.work("masks", dataset)
    staging = work / "out"  # finished split stores wait here until every split is done
    splits = params.dataset(dataset).splits
    staging.mkdir(parents=True, exist_ok=True)
    for stale in set(staging.iterdir()) - {staging / f"{split}.zarr" for split in splits}:
        remove(stale)
    with dask_client(
        options.scheduler,
        n_workers=options.n_workers,
        threads_per_worker=options.threads_per_worker,
    ) as client:
        for split in splits:
            prepared = PreparedDataset.load(paths.prepared_split(dataset, split))
            build_object_masks(
                prepared.data,
                staging / f"{split}.zarr",
                work=work / f"build-{split}",
                source=str(prepared.path),
                include_crowd=options.crowd == "include",
                images_per_shard=options.images_per_shard,
                client=client,
            )
    write_provenance(staging, f"masks@{dataset}", {"masks": options.model_dump()})
    replace(staging, paths.masks("object", dataset))
    remove(work)
