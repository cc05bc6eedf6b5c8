"""Stage `edges@<dataset>`: SAM edge masks (SA-ICM) of every split, on a dask cluster.

One SAM model per worker process: one worker per GPU when SAM runs on CUDA, else the CPU
workers of `masks`. Interrupted runs resume from the shards already finished.
"""

from __future__ import annotations

from pathlib import Path

from distributed import Client

from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.edges import EdgeSettings, build_edge_masks
from icmflow.pipeline.params import Params, ParamsError
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.sam import sam_gpus, sam_spec
from icmflow.stages.masks import build_split_stores


def run(params: Params, paths: Paths, dataset: str) -> None:
    params.dataset(dataset)
    options = params.edges
    if dataset not in options.datasets:
        raise ParamsError(
            f"dataset {dataset!r} is not in {params.source} edges.datasets "
            f"({', '.join(options.datasets) or 'empty'}); add it there so that DVC tracks "
            f"edges@{dataset}"
        )
    spec = sam_spec(params)
    settings = EdgeSettings(
        pred_iou_thresh=options.alpha, **options.model_dump(exclude={"datasets", "alpha"})
    )

    def build(prepared: PreparedDataset, out: Path, work: Path, client: Client | None) -> None:
        build_edge_masks(
            prepared,
            out,
            work=work,
            spec=spec,
            settings=settings,
            images_per_shard=params.masks.images_per_shard,
            client=client,
        )

    build_split_stores(
        params,
        paths,
        stage="edges",
        dataset=dataset,
        kind="edge",
        build=build,
        recorded={
            "sam": params.sam.model_dump(),
            "edges": options.model_dump(exclude={"datasets"}),
            "masks": {"images_per_shard": params.masks.images_per_shard},
        },
        gpus=sam_gpus(spec),
    )
