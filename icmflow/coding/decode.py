"""Bitstream files back to images, whatever wrote them: a learned codec's checkpoint, a scalable
codec's two layers, or a classical family (found from the file's suffix).

The coders are the ones encoding uses (`LearnedCodec`, `LayeredCodec`, the classical
`PillowCodec`s), so decoding verifies the same checks: a bitstream decoded with another
checkpoint, or a damaged one, is a `BitstreamError` naming the file, never a wrong image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icmflow.coding.classical import CLASSICAL, PillowCodec, classical_decoder
from icmflow.core.errors import BitstreamError, MissingInputError
from icmflow.datasets.images import write_png

LEARNED_SUFFIX = ".bin"
BITSTREAM_SUFFIXES = frozenset({LEARNED_SUFFIX, *(codec.suffix for _, codec in CLASSICAL.items())})
"""The files coded datasets hold under `bitstreams/`."""


def open_codec(checkpoint: Path | str, *, machine: Path | str | None = None, device: str = "cpu"):
    """The coder of a trained codec's checkpoint (icmflow's or CompressAI's layout, with its
    architecture recorded): a `LearnedCodec`, or with `machine` (the machine layer's checkpoint)
    a scalable codec's `LayeredCodec`. Both `encode` pixels and `decode` bytes."""
    from icmflow.codecs.checkpoint import load_codec  # PyTorch: learned codecs only
    from icmflow.coding.learned import LearnedCodec

    if machine is None:
        return LearnedCodec(load_codec(Path(checkpoint)).to(device), name=str(checkpoint))
    from icmflow.codecs.scalable import load_scalable
    from icmflow.coding.layered import LayeredCodec

    model = load_scalable(Path(checkpoint), Path(machine)).to(device)
    return LayeredCodec(model, name=str(checkpoint))


def is_layered(codec: object) -> bool:
    """Whether `codec` decodes two layers: a scalable codec's `LayeredCodec` (told by its
    machine-layer decoder, so that classical decoding never imports PyTorch)."""
    return hasattr(codec, "decode_machine")


def decode_file(codec: object | None, path: Path, *, machine: Path | None = None) -> np.ndarray:
    """The image of bitstream file `path`: with `codec`, or for a classical file without one
    (its suffix names the family); a layered codec also needs `machine`, the machine-layer
    file of the same image."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such bitstream file")
    if codec is None:
        if path.suffix.lower() == LEARNED_SUFFIX:
            raise BitstreamError(
                f"{path}: a learned codec's bitstream: say which codec decodes it (its entry in "
                "params.yaml or its checkpoint)"
            )
        codec = classical_decoder(path.suffix)
    if is_layered(codec):
        if machine is None or not Path(machine).is_file():
            raise MissingInputError(
                f"{path}: an additional layer decodes with its machine-layer file, which is not "
                f"there ({machine}); decode the machine codec's coded dataset alone for the "
                "machines' image"
            )
        return codec.decode(path.read_bytes(), Path(machine).read_bytes(), source=str(path))
    if isinstance(codec, PillowCodec) and path.suffix.lower() != codec.suffix:
        raise BitstreamError(f"{path}: a {codec.family} codec decodes {codec.suffix} files")
    return codec.decode(path.read_bytes(), source=str(path))


def bitstream_files(folder: Path) -> list[Path]:
    """Bitstream files under `folder`, subfolders included, relative to it, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: no such folder")
    return sorted(
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in BITSTREAM_SUFFIXES
    )


@dataclass(frozen=True)
class Decoded:
    bitstream: Path
    image: Path


def decode_folder(
    codec: object | None,
    folder: Path,
    out: Path,
    *,
    files: Iterable[Path] | None = None,
    machine_folder: Path | None = None,
    sizes: dict[Path, tuple[int, int]] | None = None,
) -> list[Decoded]:
    """Decode `files` (relative to `folder`; default every bitstream file under it) to
    `out/<relative path>.png`, each cropped to its (height, width) in `sizes` when given (images
    coded padded); a layered codec finds each machine-layer file at the same relative path,
    suffix `.bin`, under `machine_folder`."""
    folder, out = Path(folder), Path(out)
    decoded = []
    for relative in bitstream_files(folder) if files is None else files:
        machine = None
        if machine_folder is not None:
            machine = Path(machine_folder) / Path(relative).with_suffix(LEARNED_SUFFIX)
        image = out / Path(relative).with_suffix(".png")
        pixels = decode_file(codec, folder / relative, machine=machine)
        if sizes is not None:
            height, width = sizes[Path(relative)]
            pixels = pixels[:height, :width]
        write_png(image, pixels)
        decoded.append(Decoded(folder / relative, image))
    return decoded
