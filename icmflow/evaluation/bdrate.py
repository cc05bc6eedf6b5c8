"""Bjøntegaard delta rate between two RD curves, through the `bjontegaard` package.

BD-rate is the average bitrate difference (percent) of the test curve against the anchor at equal
quality; negative means the test codec needs fewer bits. Each curve is first reduced to its
operational RD curve, the points no other point beats in both rate and quality (a codec trained
for a larger λ that ends up both dearer and worse is dominated); the note names dropped points.
Curves with too few points left, or without overlap in quality, get no value and say why.
A quality whose smaller values are better (a task's MAE) is compared as its negative
(`lower_is_better`): BD-rate, an average over the common quality range, is the same for −q as
for any decreasing affine map of q (e.g. 1 − MAE).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import bjontegaard

MIN_POINTS = {"akima": 3, "pchip": 2, "cubic": 4}
"""Points per curve each interpolation needs (akima with fewer falls back to linear)."""


@dataclass(frozen=True)
class BDRate:
    percent: float | None
    note: str = ""


def operational_curve(
    rates: Sequence[float], quality: Sequence[float]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(kept, dropped): finite points sorted by rate, kept = those no other point dominates."""
    points = sorted((r, q) for r, q in zip(rates, quality, strict=True) if math.isfinite(q))
    kept: list[tuple[float, float]] = []
    for point in points:
        if kept and point[1] <= kept[-1][1]:
            continue  # dearer than a kept point and no better
        kept.append(point)
    dropped = [p for p in points if p not in kept]
    return kept, dropped


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
    *,
    method: str = "akima",
    lower_is_better: bool = False,
) -> BDRate:
    sign = -1.0 if lower_is_better else 1.0
    curves, notes = {}, []
    for name, rates, quality in (
        ("anchor", anchor_rates, anchor_quality),
        ("test", test_rates, test_quality),
    ):
        kept, dropped = operational_curve(rates, [sign * q for q in quality])
        if dropped:
            listed = ", ".join(f"({r:.4g} bpp, {sign * q:.4g})" for r, q in dropped)
            notes.append(f"{name}: dominated point(s) dropped: {listed}")
        if len(kept) < MIN_POINTS[method]:
            notes.append(
                f"{name} has {len(kept)} usable RD points; {method} needs {MIN_POINTS[method]}"
            )
            return BDRate(None, "; ".join(notes))
        curves[name] = kept
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = bjontegaard.bd_rate(
            [p[0] for p in curves["anchor"]],
            [p[1] for p in curves["anchor"]],
            [p[0] for p in curves["test"]],
            [p[1] for p in curves["test"]],
            method=method,
            require_matching_points=False,
        )
    notes += [str(w.message) for w in caught]
    if value is None or not math.isfinite(value):
        return BDRate(None, "; ".join(notes) or "the curves do not overlap in quality")
    return BDRate(float(value), "; ".join(notes))
