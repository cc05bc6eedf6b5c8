"""Stage `report`: the RD table, BD-rates against the anchor series, and RD plots."""

from __future__ import annotations

import json

from icmflow.core.errors import MissingInputError
from icmflow.core.files import atomic_directory, write_csv, write_json, write_text
from icmflow.evaluation.plots import QUALITY, plot_rd
from icmflow.evaluation.report import COLUMNS, bd_rates, markdown_table, rd_table
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance


def _load_metrics(paths: Paths, name: str) -> dict:
    path = paths.metrics(name) / "metrics.json"
    if not path.is_file():
        raise MissingInputError(f"{path}: missing; run `icmflow evaluate {name}` first")
    metrics = json.loads(path.read_text())
    for key in QUALITY:  # JSON has no NaN: null stands for it
        metrics[key] = float("nan") if metrics[key] is None else metrics[key]
    return metrics


def _note(anchors: list[str], method: str) -> str:
    return (
        f"\n## BD-rate against {', '.join(f'`{a}`' for a in anchors)} ({method})\n\n"
        "Negative: the test series needs fewer bits for the same quality.\n\n"
    )


def run(params: Params, paths: Paths) -> None:
    rows = rd_table(
        [
            {
                **_load_metrics(paths, name),
                "family": entry.family,
                "series": entry.series_name,
                "setting": entry.setting,
            }
            for name, entry in params.codecs.items()
        ]
    )
    options = params.report
    bd = bd_rates(rows, options.anchors, options.bd_method)
    with atomic_directory(paths.report) as out:
        write_csv(out / "rd.csv", rows, COLUMNS)
        for series in params.series():  # one file per series, for dvc.yaml's plots
            write_csv(out / f"rd_{series}.csv", [r for r in rows if r["series"] == series], COLUMNS)
        write_json(out / "bd_rate.json", bd)
        bd_rows = [
            {
                **b,
                "bd_rate_percent": float("nan")
                if b["bd_rate_percent"] is None
                else b["bd_rate_percent"],
            }
            for b in bd
        ]
        write_text(
            out / "rd.md",
            "# Rate–distortion\n\n"
            + markdown_table(rows, COLUMNS)
            + _note(options.anchors, options.bd_method)
            + markdown_table(bd_rows, ("test", "anchor", "quality", "bd_rate_percent", "note"))
            + "\nbpp = total bitstream bits / total pixels; PSNR and MS-SSIM are per-image "
            + "means; object PSNR averages over images that have objects.\n",
        )
        for quality, label in QUALITY.items():
            plot_rd(rows, quality, out / f"{quality}_bpp.png", f"{label} against rate")
        write_provenance(
            out,
            "report",
            {"codecs": list(params.codecs), "report": options.model_dump()},
        )
