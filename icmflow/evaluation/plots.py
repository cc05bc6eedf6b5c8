"""Plots people would rather look at than read: RD curves and training logs.

Points whose quality is undefined (NaN: object PSNR of images without objects, accuracy without
ground truth) or infinite (a lossless PSNR) are left out; a figure with no point left says why
in words instead of showing an empty frame. Each plot function returns the figure it saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from icmflow.evaluation.accuracy import LOWER_IS_BETTER

QUALITY = {"psnr": "PSNR (dB)", "object_psnr": "object-region PSNR (dB)", "ms_ssim": "MS-SSIM"}
UNDEFINED = {
    "psnr": "every codec is lossless (infinite PSNR)",
    "object_psnr": "no image of the evaluated split has objects",
    "ms_ssim": "every image has a side under 161 pixels",
}
"""Why a quality can have no finite value at all."""
BPP_LABEL = "bits per pixel (bitstream bytes × 8 / pixels)"


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _label_points(ax: Axes, points: Iterable[tuple[float, float, str]]) -> None:
    """Each point's setting (λ=…, q=…) beside it."""
    for x, y, setting in points:
        ax.annotate(setting, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")


def _nothing_to_plot(fig: Figure, ax: Axes, path: Path, title: str, why: str) -> Figure:
    """A figure that says there is nothing to plot, and why (no empty axes)."""
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, f"nothing to plot: {why}", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path)
    return fig


def plot_rd(rows: Sequence[dict], quality: str, path: Path, title: str) -> Figure:
    """Quality against bpp, one line per series (classical codecs dashed), points labelled
    with their setting (λ or quality)."""
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.subplots()
    rows = [r for r in rows if _finite(r["bpp"], r[quality])]
    if not rows:
        return _nothing_to_plot(fig, ax, path, title, UNDEFINED[quality])
    for series in sorted({r["series"] for r in rows}):
        points = sorted(
            (r["bpp"], r[quality], r["setting"], r["family"]) for r in rows if r["series"] == series
        )
        style = "-" if points[0][3] == "learned" else "--"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=series)
        _label_points(ax, (p[:3] for p in points))
    ax.set_xlabel(BPP_LABEL)
    ax.set_ylabel(QUALITY[quality])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="series (dashed: classical)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return fig


def plot_accuracy(rows: Sequence[dict], metric: str, path: Path, title: str) -> Figure:
    """A task's `metric` against bpp: one line per series and model (pre-trained solid or, for
    classical codecs, dashed; fine-tuned dotted with crosses), points labelled with their
    setting, the original images' accuracy as a horizontal line per model."""
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.subplots()
    originals = [r for r in rows if r["family"] == "original" and _finite(r[metric])]
    rows = [r for r in rows if r["family"] != "original" and _finite(r["bpp"], r[metric])]
    if not (rows or originals):
        return _nothing_to_plot(fig, ax, path, title, f"no {metric} (no ground truth?)")
    for model, line in (("pre-trained", None), ("fine-tuned", ":")):
        for original in (r for r in originals if r["model"] == model):
            ax.axhline(
                original[metric],
                color="black",
                linestyle=line or "-",
                linewidth=0.8,
                label=f"uncompressed ({model})",
            )
        chosen = [r for r in rows if r["model"] == model]
        for series in sorted({r["series"] for r in chosen}):
            points = sorted(
                (r["bpp"], r[metric], r["setting"], r["family"])
                for r in chosen
                if r["series"] == series
            )
            style = line or ("-" if points[0][3] == "learned" else "--")
            marker = "x" if line else "o"
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                style,
                marker=marker,
                label=f"{series} ({model})",
            )
            _label_points(ax, (p[:3] for p in points))
    ax.set_xlabel(BPP_LABEL)
    ax.set_ylabel(f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return fig


def plot_training_log(rows: Sequence[dict], path: Path, title: str) -> Figure:
    """Every logged term against the training step, one panel each (log scale for `loss`)."""
    keys = [k for k in rows[0] if k != "step"] if rows else []
    fig = Figure(figsize=(3.2 * max(len(keys), 1), 3.2), dpi=110)
    steps = [r["step"] for r in rows]
    for ax, key in zip(fig.subplots(1, max(len(keys), 1), squeeze=False)[0], keys, strict=False):
        ax.plot(steps, [r[key] for r in rows], linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_title(key)
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return fig


def plot_scalable(
    rows: Sequence[dict], scalable: Sequence[dict], quality: str, path: Path, title: str
) -> Figure:
    """The paper's Fig. 6: each scalable series' human images against the additional layer's
    bpp (solid, squares) and against both layers' (dotted, same colour), beside every other
    series (learned solid, classical dashed) at its own bpp."""
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.subplots()
    for series in sorted({r["series"] for r in rows} - {r["series"] for r in scalable}):
        points = sorted((r["bpp"], r[quality], r["family"]) for r in rows if r["series"] == series)
        style = "-" if points[0][2] == "learned" else "--"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=series)
    for series in sorted({r["series"] for r in scalable}):
        points = sorted(
            (r["additional_bpp"], r["bpp"], r[quality]) for r in scalable if r["series"] == series
        )
        (line,) = ax.plot(
            [p[0] for p in points],
            [p[2] for p in points],
            "-",
            marker="s",
            label=f"{series} (additional bits)",
        )
        ax.plot(
            [p[1] for p in points],
            [p[2] for p in points],
            ":",
            marker="s",
            color=line.get_color(),
            label=f"{series} (machine + additional bits)",
        )
    ax.set_xlabel(BPP_LABEL)
    ax.set_ylabel(QUALITY[quality])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return fig
