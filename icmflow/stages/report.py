"""Stage `report`: the RD table, BD-rates against the anchor loss, and RD plots."""

from __future__ import annotations

import json

from icmflow.evaluation.plots import QUALITY, plot_rd
from icmflow.evaluation.report import COLUMNS, bd_rates, markdown_table, rd_table, write_csv
from icmflow.files import atomic_directory, write_json, write_text
from icmflow.pipeline.params import Params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance
from icmflow.training import MASK_OF_LOSS


def _load_metrics(paths: Paths, name: str) -> dict:
    path = paths.metrics(name) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `icmflow evaluate {name}` first")
    return json.loads(path.read_text())


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def run(params: Params, paths: Paths) -> None:
    metrics = [_load_metrics(paths, name) for name in params.codecs]
    for m in metrics:
        for key in ("psnr", "object_psnr", "ms_ssim"):
            m[key] = _nan(m[key])
    rows = rd_table(metrics)
    options = params.report
    bd = bd_rates(rows, options.anchor, options.bd_method)
    with atomic_directory(paths.report) as out:
        write_csv(out / "rd.csv", rows)
        for loss in MASK_OF_LOSS:  # every loss, so that dvc.yaml's plots find each file
            write_csv(out / f"rd_{loss}.csv", [r for r in rows if r["loss"] == loss])
        write_json(out / "bd_rate.json", bd)
        bd_rows = [{**b, "bd_rate_percent": _nan(b["bd_rate_percent"])} for b in bd]
        write_text(
            out / "rd.md",
            "# Rate–distortion\n\n"
            + markdown_table(rows, COLUMNS)
            + f"\n## BD-rate against `{options.anchor}` ({options.bd_method})\n\n"
            + "Negative: the test loss needs fewer bits for the same quality.\n\n"
            + markdown_table(bd_rows, ("test", "anchor", "quality", "bd_rate_percent", "note"))
            + "\nbpp = total bitstream bits / total pixels; PSNR and MS-SSIM are per-image "
            + "means; object PSNR averages over images that have objects.\n",
        )
        for quality, label in QUALITY.items():
            plot_rd(rows, quality, out / f"{quality}_bpp.png", f"{label} against rate")
        write_provenance(out, "report", {"codecs": params.codecs, "report": options.model_dump()})
