"""Plots people would rather look at than read: RD curves and training logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from icmflow.evaluation.accuracy import LOWER_IS_BETTER

QUALITY = {"psnr": "PSNR (dB)", "object_psnr": "object-region PSNR (dB)", "ms_ssim": "MS-SSIM"}


def plot_rd(rows: Sequence[dict], quality: str, path: Path, title: str) -> None:
    """Quality against bpp, one line per series (classical codecs dashed), points labelled
    with their setting (λ or quality)."""
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.subplots()
    for series in sorted({r["series"] for r in rows}):
        points = sorted(
            (r["bpp"], r[quality], r["setting"], r["family"]) for r in rows if r["series"] == series
        )
        style = "-" if points[0][3] == "learned" else "--"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=series)
        for bpp, value, setting, _ in points:
            ax.annotate(
                setting, (bpp, value), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("bits per pixel (bitstream bytes × 8 / pixels)")
    ax.set_ylabel(QUALITY[quality])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="series (dashed: classical)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def plot_accuracy(rows: Sequence[dict], metric: str, path: Path, title: str) -> None:
    """A task's `metric` against bpp: one line per series and model (pre-trained solid or, for
    classical codecs, dashed; fine-tuned dotted with crosses), the original images' accuracy as
    a horizontal line per model."""
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.subplots()
    for model, line in (("pre-trained", None), ("fine-tuned", ":")):
        chosen = [r for r in rows if r["model"] == model]
        for original in (r for r in chosen if r["family"] == "original"):
            ax.axhline(
                original[metric],
                color="black",
                linestyle=line or "-",
                linewidth=0.8,
                label=f"uncompressed ({model})",
            )
        for series in sorted({r["series"] for r in chosen if r["family"] != "original"}):
            points = sorted(
                (r["bpp"], r[metric], r["family"]) for r in chosen if r["series"] == series
            )
            style = line or ("-" if points[0][2] == "learned" else "--")
            marker = "x" if line else "o"
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                style,
                marker=marker,
                label=f"{series} ({model})",
            )
    ax.set_xlabel("bits per pixel (bitstream bytes × 8 / pixels)")
    ax.set_ylabel(f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def plot_training_log(rows: Sequence[dict], path: Path, title: str) -> None:
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


def plot_scalable(
    rows: Sequence[dict], scalable: Sequence[dict], quality: str, path: Path, title: str
) -> None:
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
    ax.set_xlabel("bits per pixel (bitstream bytes × 8 / pixels)")
    ax.set_ylabel(QUALITY[quality])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
