"""Stage `masks@<dataset>`: object masks of every split, built on a dask cluster.

With `masks.source: sam-boxes` the masks come from Segment Anything's prediction for every box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distributed import Client

from icmflow.core.files import remove, replace
from icmflow.core.locks import exclusive
from icmflow.core.storage import download, require_writable
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.build import build_object_masks
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import Params, ParamsError
from icmflow.pipeline.paths import Paths, shared_store, shared_work
from icmflow.pipeline.provenance import write_provenance
from icmflow.runtime.cluster import dask_client

SplitBuilder = Callable[[PreparedDataset, Path, Path, Client | None], Any]
"""Builds one split's store: (prepared split, store path, work directory, dask client or None
to build in this process)."""


def build_split_stores(
    params: Params,
    paths: Paths,
    *,
    stage: str,
    dataset: str,
    kind: str,
    build: SplitBuilder,
    recorded: dict[str, Any],
    gpus: Sequence[str] = (),
) -> None:
    """Build the `kind` store of every split on one dask cluster; all appear together at the end.

    Finished split stores wait in the work directory, so an interrupted run resumes there. With
    `storage.root`, the workers build each store there (`shared_store`), then it is copied here.
    A second run of the same stage on the same dataset stops while this one holds its lock.
    """
    with exclusive(paths.lock(stage, dataset), f"icmflow {stage} {dataset}"):
        if params.storage.root is not None:
            require_writable(params.storage.root, "storage.root")
        options = params.masks
        work = paths.work(stage, dataset)
        staging = work / "out"
        splits = params.dataset(dataset).splits
        staging.mkdir(parents=True, exist_ok=True)
        for stale in set(staging.iterdir()) - {staging / f"{split}.zarr" for split in splits}:
            remove(stale)
        prepared = {
            split: PreparedDataset.load(paths.prepared_split(dataset, split)) for split in splits
        }
        inputs = current_inputs(paths.root, (p.path for p in prepared.values()))
        shards = sum(-(-len(p.images) // options.images_per_shard) for p in prepared.values())
        with dask_client(
            options.scheduler,
            n_workers=options.n_workers,
            threads_per_worker=options.threads_per_worker,
            gpus=gpus,
            tasks=shards,
            setting="masks.scheduler",
        ) as client:
            for split, data in prepared.items():
                local = staging / f"{split}.zarr"
                if params.storage.root is None:
                    build(data, local, work / f"build-{split}", client)
                    continue
                name = f"{dataset}/{kind}/{split}.zarr"
                shared = shared_store(params.storage.root, stage, name)
                build(data, shared, shared_work(params.storage.root, stage, name), client)
                remove(local)
                download(shared, local)
        write_provenance(
            staging,
            f"{stage}@{dataset}",
            recorded,
            command=command(params, stage, dataset),
            inputs=inputs,
        )
        replace(staging, paths.masks(kind, dataset))
        remove(work)


def run(params: Params, paths: Paths, dataset: str) -> None:
    entry = params.dataset(dataset)
    if not entry.has_annotations:
        raise ParamsError(
            f"dataset {dataset!r} has format {entry.format}, without annotations: object masks "
            "are made from annotations, so it has none (and no masks@ stage). Objectives "
            "without masks (mse, edge) train on it; evaluate measures PSNR and MS-SSIM"
        )
    options = params.masks
    include_crowd = options.crowd == "include"
    recorded: dict[str, Any] = {"masks": options.model_dump()}
    gpus: list[str] = []
    if options.source == "sam-boxes":  # PyTorch and SAM: imported for this source only
        from icmflow.masks.sam_boxes import build_sam_box_masks
        from icmflow.pipeline.sam import sam_gpus, sam_spec

        spec = sam_spec(params)
        gpus, recorded["sam"] = sam_gpus(spec), params.sam.model_dump()

        def build(prepared: PreparedDataset, out: Path, work: Path, client: Client | None) -> None:
            build_sam_box_masks(
                prepared,
                out,
                work=work,
                spec=spec,
                include_crowd=include_crowd,
                boxes_per_batch=options.boxes_per_batch,
                images_per_shard=options.images_per_shard,
                client=client,
            )
    else:

        def build(prepared: PreparedDataset, out: Path, work: Path, client: Client | None) -> None:
            build_object_masks(
                prepared.data,
                out,
                work=work,
                source=str(prepared.path),
                include_crowd=include_crowd,
                images_per_shard=options.images_per_shard,
                client=client,
            )

    build_split_stores(
        params,
        paths,
        stage="masks",
        dataset=dataset,
        kind="object",
        build=build,
        recorded=recorded,
        gpus=gpus,
    )
