"""Plots people would rather look at than read: RD curves and training logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

QUALITY = {"psnr": "PSNR (dB)", "object_psnr": "object-region PSNR (dB)", "ms_ssim": "MS-SSIM"}


def plot_rd(rows: Sequence[dict], quality: str, path: Path, title: str) -> None:
    """Quality against bpp, one line per loss, each point labelled with its λ."""
    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.subplots()
    for loss in sorted({r["loss"] for r in rows}):
        points = sorted((r["bpp"], r[quality], r["lambda"]) for r in rows if r["loss"] == loss)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=loss)
        for bpp, value, lmbda in points:
            ax.annotate(
                f"{lmbda:g}", (bpp, value), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("bits per pixel (bitstream bytes × 8 / pixels)")
    ax.set_ylabel(QUALITY[quality])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="loss (points: λ)")
    fig.tight_layout()
    fig.savefig(path)


def plot_training_log(rows: Sequence[dict], path: Path, title: str) -> None:
    """Loss, bpp and distortion against the training step, one panel each."""
    fig = Figure(figsize=(10, 3.2), dpi=110)
    steps = [r["step"] for r in rows]
    for ax, key in zip(fig.subplots(1, 3), ("loss", "bpp", "mse"), strict=True):
        ax.plot(steps, [r[key] for r in rows], linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_title(key)
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
