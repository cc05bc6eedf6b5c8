"""Stage `prepare@<dataset>`: read, validate and normalise every split, with a report of skips."""

from __future__ import annotations

import logging

from icmflow.core.errors import InputError, ProblemLog
from icmflow.core.files import atomic_directory, write_json
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.datasets.prepared import write_prepared
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance

log = logging.getLogger(__name__)


def run(params: Params, paths: Paths, dataset: str) -> None:
    source = params.dataset(dataset)
    options = source.reader_kwargs()
    on_error = source.on_error or params.prepare.on_error  # the dataset's own, if it has one
    problems = ProblemLog(on_error)
    final = paths.prepared(dataset)
    counts = {}
    with atomic_directory(final) as out:
        for split in source.splits:
            annotations, images = source.split_paths(split)
            raw = FORMATS[source.format].read(annotations, images, problems, **options)
            prepared = normalise(
                raw,
                images,
                problems,
                decode_images=params.prepare.decode_images,
                workers=params.prepare.workers,
            )
            if not prepared["images"]:
                raise InputError(
                    raw.source,
                    "",
                    f"split {split!r} of dataset {dataset!r} has no images"
                    + (" left after the skips logged above" if problems.skipped else "")
                    + ": every later stage would average over nothing; check its paths",
                )
            write_prepared(out / f"{split}.json", prepared, image_root=images, final_dir=final)
            counts[split] = {
                "images": len(prepared["images"]),
                "annotations": len(prepared["annotations"]),
                "crowd": sum(a["iscrowd"] for a in prepared["annotations"]),
                **raw.counts,
            }
            log.info("%s/%s: %s", dataset, split, counts[split])
        write_json(
            out / "report.json",
            {
                "format": source.format,
                "on_error": on_error,
                "options": {k: str(v) for k, v in options.items()},
                "splits": counts,
                "skipped": problems.as_records(),
                "notes": problems.note_records(),
            },
        )
        write_provenance(
            out,
            f"prepare@{dataset}",
            {
                "datasets": {dataset: source.model_dump()},
                "prepare": params.prepare.model_dump() | {"on_error": on_error},
            },
        )
    if problems.skipped:
        log.warning("%d entries skipped; see %s", len(problems.skipped), final / "report.json")
    if problems.notes:
        log.info("%d notes on entries; see %s", len(problems.notes), final / "report.json")
