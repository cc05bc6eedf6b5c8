"""Bit-allocation maps (the auxiliary-loss paper's Figs. 5–6): where a learned codec spends bits.

The bits of a latent symbol are what CompressAI's rANS coder spends on it: −log2 of its
probability in the entropy model's quantised CDF table (the codec's likelihoods as the coder
uses them, 16-bit precision), plus the bypass bits of a symbol outside the table (the escape
symbol, then 4-bit chunks: `rans_interface.cpp`). They are recorded while the codec compresses
the image (every `EntropyModel.compress` call: the latent y and the hyper-latent z), summed over
channels per position, and spread evenly over the image pixels the position covers (16×16 for
y, 64×64 for z): a map of bits per pixel that sums to the bitstream's bits but the coder's
final flush (`tests/test_bit_allocation.py`). A codec that codes a latent without
`EntropyModel.compress` (e.g. `tcm`'s slices) gets the map of its eval-mode likelihoods,
−log2 p summed over channels, instead (`BitAllocation.source`). Maps are computed on the padded
image (a multiple of 64, as the codec codes it) and cropped to the image for display.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, EntropyModel
from compressai.models import CompressionModel
from PIL import Image

from icmflow.coding.learned import PAD_MULTIPLE, to_tensor
from icmflow.coding.reproducible import fixed_numerics
from icmflow.core.files import write_bytes, write_csv, write_text

BYPASS_PRECISION = 4
"""Bits per bypass chunk of CompressAI's rANS coder; 2⁴ − 1 is its largest chunk count symbol."""


@dataclass(frozen=True)
class BitAllocation:
    """Bits per pixel of the padded image (`padded`), the image's own size, and where the bits
    come from: the entropy coder's tables (`coder`) or the likelihoods (`likelihoods`)."""

    padded: np.ndarray
    height: int
    width: int
    source: Literal["coder", "likelihoods"]

    @property
    def total(self) -> float:
        """Bits of the whole bitstream (padding included, as it is coded)."""
        return float(self.padded.sum(dtype=np.float64))

    @property
    def image(self) -> np.ndarray:
        return self.padded[: self.height, : self.width]


def _padded(model: CompressionModel, rgb: np.ndarray) -> torch.Tensor:
    device = next(model.parameters()).device
    height, width = rgb.shape[:2]
    multiple = getattr(model, "pad_multiple", PAD_MULTIPLE)
    x = to_tensor(rgb, device)
    return F.pad(x, (0, -width % multiple, 0, -height % multiple), mode="replicate")


def symbol_bits(model: EntropyModel, symbols: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
    """Bits rANS spends on each symbol (same shape) coded with the CDFs `indexes` select."""
    cdf, lengths = model._quantized_cdf.long(), model._cdf_length.long()
    index = indexes.long()
    value = symbols.long() - model._offset.long()[index]
    escape = lengths[index] - 2
    below, above = value < 0, value >= escape
    raw = torch.where(below, -2 * value - 1, torch.where(above, 2 * (value - escape), 0))
    coded = torch.where(below | above, escape, value)
    probability = (cdf[index, coded + 1] - cdf[index, coded]).double()
    bits = model.entropy_coder_precision - torch.log2(probability)
    length = torch.where(raw > 0, torch.floor(torch.log2(raw.double().clamp(min=1))) + 1, 0)
    chunks = torch.ceil(length / BYPASS_PRECISION)
    limit = 2**BYPASS_PRECISION - 1
    bypass = BYPASS_PRECISION * (torch.div(chunks, limit, rounding_mode="floor") + 1 + chunks)
    return bits + torch.where(below | above, bypass, 0)


@contextmanager
def _recording(model: CompressionModel) -> Iterator[list[torch.Tensor]]:
    """Bits per symbol of every `EntropyModel.compress` call while the block runs."""
    found: list[torch.Tensor] = []

    def watch(module: EntropyModel) -> Any:
        compress = module.compress

        def recorded(inputs: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if isinstance(module, EntropyBottleneck):  # as its compress builds them
                indexes = module._build_indexes(inputs.size())
                dims = inputs.dim() - 2
                medians = module._extend_ndims(module._get_medians().detach(), dims)
                means = medians.expand(inputs.size(0), *([-1] * (dims + 1)))
            else:
                indexes, means = args[0], args[1] if len(args) > 1 else kwargs.get("means")
            symbols = module.quantize(inputs, "symbols", means)
            found.append(symbol_bits(module, symbols, indexes))
            return compress(inputs, *args, **kwargs)

        return recorded

    watched = [m for m in model.modules() if isinstance(m, EntropyModel)]
    for module in watched:  # an instance attribute shadows the class's method
        module.compress = watch(module)
    try:
        yield found
    finally:
        for module in watched:
            del module.compress


def _spread(latents: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
    """Sum of (C, h, w) bit tensors, each spread evenly over the pixels of its positions."""
    total = torch.zeros(size, dtype=torch.float64, device=latents[0].device)
    for bits in latents:
        per_position = bits.double().sum(0)
        factor = size[0] // per_position.shape[0]
        if (per_position.shape[0] * factor, per_position.shape[1] * factor) != tuple(size):
            raise ValueError(f"a latent of {tuple(bits.shape)} does not tile the image {size}")
        spread = per_position.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
        total += spread / factor**2
    return total


@torch.no_grad()
def bit_allocation(model: CompressionModel, rgb: np.ndarray) -> BitAllocation:
    """The bit-allocation map of one H×W×3 uint8 image (`model` updated, in eval mode)."""
    x = _padded(model.eval(), rgb)
    with fixed_numerics(x.device), _recording(model) as found:
        strings = model.compress(x)["strings"]
    if len(found) == len(strings):
        latents, source = [bits[0] for bits in found], "coder"
    else:  # some latent is coded past EntropyModel.compress
        with fixed_numerics(x.device):
            likelihoods = model(x)["likelihoods"].values()
        latents, source = [-torch.log2(p[0].double()) for p in likelihoods], "likelihoods"
    return BitAllocation(_spread(latents, x.shape[-2:]).cpu().numpy(), *rgb.shape[:2], source)


@torch.no_grad()
def real_bits(model: CompressionModel, rgb: np.ndarray) -> int:
    """Bits of the entropy coder's strings for the image (no container header)."""
    x = _padded(model.eval(), rgb)
    with fixed_numerics(x.device):
        strings = model.compress(x)["strings"]
    return 8 * sum(len(s) for group in strings for s in group)


def _colour(values: np.ndarray, cmap: str) -> np.ndarray:
    """Values in [0, 1] -> H×W×3 uint8 through a matplotlib colormap."""
    rgba = matplotlib.colormaps[cmap](np.clip(values, 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def write_heat_map(path: Path, bits: np.ndarray, vmax: float) -> None:
    """Bits per pixel as a heat map (inferno: black 0, bright `vmax` and above)."""
    _write_png(path, _colour(bits / max(vmax, 1e-12), "inferno"))


def write_difference_map(path: Path, first: np.ndarray, second: np.ndarray, limit: float) -> None:
    """second − first bits per pixel (coolwarm: red where the second spends more, blue less,
    white equal; saturated at ±`limit`)."""
    _write_png(path, _colour(0.5 + (second - first) / (2 * max(limit, 1e-12)), "coolwarm"))


def write_bit_maps(
    models: dict[str, CompressionModel],
    images: Sequence[tuple[str, np.ndarray]],
    out: Path,
    masks: Mapping[str, np.ndarray] | None = None,
) -> list[dict]:
    """Heat maps `out/<codec>/<stem>.png` of two codecs on `images` (stem, RGB), their
    difference `out/difference/<stem>.png`, `bits.csv` (the maps' sums and the real bits) and
    `index.md` linking them all; one colour scale per image for both codecs. With object
    `masks` (stem -> H×W bool), each row also has the map's bits inside the object pixels, and
    `index.md` opens with the bits inside and outside objects over all images. Returns the
    rows."""
    if len(models) != 2:
        raise ValueError(f"bit maps compare two codecs, got {list(models)}")
    (first, a), (second, b) = models.items()
    rows, lines = [], []
    for stem, rgb in images:
        maps = {first: bit_allocation(a, rgb), second: bit_allocation(b, rgb)}
        scale = max(float(np.percentile(m.image, 99)) for m in maps.values())
        for name, found in maps.items():
            write_heat_map(out / name / f"{stem}.png", found.image, scale)
        difference = maps[second].image - maps[first].image
        limit = float(np.percentile(np.abs(difference), 99))
        write_difference_map(
            out / "difference" / f"{stem}.png", *(m.image for m in maps.values()), limit
        )
        row: dict = {"image": stem, "pixels": rgb.shape[0] * rgb.shape[1], "scale_bpp": scale}
        mask = None if masks is None else masks[stem]
        if mask is not None:
            row["object_pixels"] = int(mask.sum())
        for name, model in ((first, a), (second, b)):
            row[f"{name}_map_bits"] = maps[name].total
            if mask is not None:
                row[f"{name}_object_bits"] = float(maps[name].image[mask].sum(dtype=np.float64))
            row[f"{name}_source"] = maps[name].source
            row[f"{name}_real_bits"] = real_bits(model, rgb)
        rows.append(row)
        lines.append(
            f"| {stem} | ![]({first}/{stem}.png) {_bpp(row, first)} "
            f"| ![]({second}/{stem}.png) {_bpp(row, second)} "
            f"| ![](difference/{stem}.png) ±{limit:.3g} |\n"
        )
    columns = list(rows[0]) if rows else ["image"]
    write_csv(out / "bits.csv", rows, columns)
    summary = inside_outside(rows, (first, second)) if masks is not None and rows else ""
    write_text(out / "index.md", _index_header(first, second, summary) + "".join(lines))
    return rows


def inside_outside(rows: Sequence[dict], codecs: Sequence[str]) -> str:
    """A table of each codec's map bits inside and outside the object pixels of all `rows`
    (bits per pixel of each region, and the share of the bits spent on objects)."""
    pixels = sum(r["pixels"] for r in rows)
    inside = sum(r["object_pixels"] for r in rows)
    lines = [
        f"## Bits inside and outside objects ({len(rows)} images, {inside / pixels:.1%} of "
        "their pixels in objects)\n\n| codec | bpp in objects | bpp outside | share of bits in "
        "objects |\n| --- | --- | --- | --- |\n"
    ]
    for name in codecs:
        total = sum(r[f"{name}_map_bits"] for r in rows)
        objects = sum(r[f"{name}_object_bits"] for r in rows)
        lines.append(
            f"| {name} | {objects / max(inside, 1):.4f} | "
            f"{(total - objects) / max(pixels - inside, 1):.4f} | {objects / total:.1%} |\n"
        )
    return "".join(lines) + "\n"


def _bpp(row: dict, name: str) -> str:
    return f"{row[f'{name}_real_bits'] / row['pixels']:.4f} bpp"


def _index_header(first: str, second: str, summary: str) -> str:
    return (
        f"# Bit allocation: {first} against {second}\n\n"
        "Bits per pixel from each codec's likelihoods (inferno: black none, bright the image's "
        "99th percentile over both codecs and above); difference: "
        f"{second} − {first} (red: {second} spends more, blue: less). The bpp under each map is "
        "the real bitstream's (bits.csv: the maps' sums and the real bits per image).\n\n"
        f"{summary}| image | {first} | {second} | difference |\n| --- | --- | --- | --- |\n"
    )
