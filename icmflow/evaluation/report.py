"""The RD report: one table over all codecs, and BD-rates of every series against each anchor.

A *series* is the RD curve of a group of codecs (one architecture and objective at several λ, or
one classical family at several qualities); BD-rates compare series, never single codecs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def rd_table(metrics: Sequence[dict]) -> list[dict]:
    """One row per codec, sorted by series then bpp."""
    rows = [{column: m[column] for column in COLUMNS} for m in metrics]
    return sorted(rows, key=lambda r: (r["series"], r["bpp"]))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bd_rates(
    rows: Sequence[dict],
    anchors: Sequence[str],
    method: str,
    qualities: Sequence[str] = tuple(QUALITY),
) -> list[dict]:
    """BD-rate (%) of every other series against each anchor series, per quality metric (a
    pixel metric, or a task's accuracy)."""
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
