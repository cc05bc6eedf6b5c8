"""The RD report: one table over all codecs and the BD-rates of each loss against the anchor."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from icmflow.evaluation.bdrate import bd_rate
from icmflow.evaluation.plots import QUALITY

COLUMNS = ("codec", "loss", "lambda", "bpp", "psnr", "object_psnr", "ms_ssim", "images")


def rd_table(metrics: Sequence[dict]) -> list[dict]:
    """One row per codec, sorted by loss then bpp."""
    rows = [{column: m[column] for column in COLUMNS} for m in metrics]
    return sorted(rows, key=lambda r: (r["loss"], r["bpp"]))


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bd_rates(rows: Sequence[dict], anchor: str, method: str) -> list[dict]:
    """BD-rate (%) of every other loss against `anchor`, for each quality metric."""
    losses = sorted({r["loss"] for r in rows} - {anchor})
    anchor_rows = [r for r in rows if r["loss"] == anchor]
    results = []
    for loss in losses:
        test_rows = [r for r in rows if r["loss"] == loss]
        for quality in QUALITY:
            result = bd_rate(
                [r["bpp"] for r in anchor_rows],
                [r[quality] for r in anchor_rows],
                [r["bpp"] for r in test_rows],
                [r[quality] for r in test_rows],
                method=method,
            )
            results.append(
                {
                    "test": loss,
                    "anchor": anchor,
                    "quality": quality,
                    "bd_rate_percent": result.percent,
                    "note": result.note,
                }
            )
    return results
