"""The RD report: one table over all codecs, and BD-rates of every series against each anchor.

A *series* is the RD curve of a group of codecs (one architecture and objective at several λ, or
one classical family at several qualities); BD-rates compare series, never single codecs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from icmflow.evaluation.bdrate import bd_rate
from icmflow.evaluation.plots import QUALITY

COLUMNS = (
    "codec",
    "family",
    "series",
    "setting",
    "bpp",
    "psnr",
    "object_psnr",
    "ms_ssim",
    "images",
)


def _rows(metrics: Sequence[dict], columns: Sequence[str], rate: str) -> list[dict]:
    """`columns` of every codec's metrics, sorted by series then `rate`."""
    rows = [{column: m[column] for column in columns} for m in metrics]
    return sorted(rows, key=lambda r: (r["series"], r[rate]))


def rd_table(metrics: Sequence[dict]) -> list[dict]:
    """One row per codec, sorted by series then bpp."""
    return _rows(metrics, COLUMNS, "bpp")


DECIMALS = 4
"""Every non-integer number of a markdown table has this many decimals."""


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{DECIMALS}f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table of `columns`; floats with `DECIMALS` decimals, NaN as –."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bd_rates(
    rows: Sequence[dict],
    anchors: Sequence[str],
    method: str,
    qualities: Sequence[str] = tuple(QUALITY),
    lower_is_better: Collection[str] = (),
) -> list[dict]:
    """BD-rate (%) of every other series against each anchor series, per quality metric (a
    pixel metric, or a task's accuracy; those in `lower_is_better` are better when smaller)."""
    series = sorted({r["series"] for r in rows})
    results = []
    for anchor in anchors:
        anchor_rows = [r for r in rows if r["series"] == anchor]
        for test in (s for s in series if s != anchor):
            test_rows = [r for r in rows if r["series"] == test]
            for quality in qualities:
                result = bd_rate(
                    [r["bpp"] for r in anchor_rows],
                    [r[quality] for r in anchor_rows],
                    [r["bpp"] for r in test_rows],
                    [r[quality] for r in test_rows],
                    method=method,
                    lower_is_better=quality in lower_is_better,
                )
                results.append(
                    {
                        "test": test,
                        "anchor": anchor,
                        "quality": quality,
                        "bd_rate_percent": result.percent,
                        "note": result.note,
                    }
                )
    return results


SCALABLE_COLUMNS = (
    "codec",
    "series",
    "mode",
    "m",
    "setting",
    "human_parameters",
    "machine_bpp",
    "additional_bpp",
    "bpp",
    "psnr",
    "ms_ssim",
)
"""Scalable codecs' human images: bpp counts both layers, `additional_bpp` the human layer's."""


def scalable_table(metrics: Sequence[dict]) -> list[dict]:
    """One row per scalable codec, by series then additional bpp."""
    return _rows(metrics, SCALABLE_COLUMNS, "additional_bpp")


def parameters_table(rows: Sequence[dict]) -> str:
    """The paper's Table I analogue: the human layer's size for each series (mode and m)."""
    sizes = {r["series"]: (r["mode"], r["m"], r["human_parameters"]) for r in rows}
    table = [
        {"series": s, "mode": mode, "m": "–" if m is None else m, "parameters (M)": n / 1e6}
        for s, (mode, m, n) in sorted(sizes.items(), key=lambda i: (i[1][0], i[1][1] or 0))
    ]
    return markdown_table(table, ("series", "mode", "m", "parameters (M)"))


def psnr_table(rows: Sequence[dict]) -> str:
    """The paper's Table II analogue: PSNR of the human images per λ (rows) and series."""
    series = sorted({r["series"] for r in rows})
    by_lambda: dict[str, dict] = {}
    for r in rows:
        by_lambda.setdefault(r["setting"], {"λ": r["setting"]})[r["series"]] = r["psnr"]
    ordered = sorted(by_lambda.items(), key=lambda item: float(item[0].split("=")[1]))
    table = [{s: math.nan for s in series} | row for _, row in ordered]
    return markdown_table(table, ("λ", *series))
