"""Stage `sample`: write the embedded sample dataset in every layout icmflow reads."""

from __future__ import annotations

from icmflow.core.files import atomic_directory
from icmflow.datasets.sample import write_sample
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance


def run(params: Params, paths: Paths) -> None:
    options = params.sample.model_dump()
    with atomic_directory(paths.sample) as out:
        write_sample(out, **options)
        write_provenance(out, "sample", {"sample": options})
