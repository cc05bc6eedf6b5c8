"""`icmflow decode` and `icmflow show`: bitstreams back to PNGs, and pictures of masks and of
coded images beside their originals. Neither is a DVC stage: they read what stages wrote.

A codec is named as in params.yaml (its entry, `--params`) or by its checkpoint's path; a coded
dataset (`data/coded/<codec>`) names its own codec in its `provenance.json`, and a scalable
codec's its machine layer's coded dataset in `layers.json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icmflow.coding.decode import LEARNED_SUFFIX, Decoded, bitstream_files, decode_folder
from icmflow.core.errors import IcmflowError, MissingInputError
from icmflow.datasets.images import read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.overlay import (
    EDGE_COLOUR,
    OBJECT_COLOUR,
    difference,
    overlay,
    side_by_side,
)
from icmflow.pipeline.paths import Paths

BITSTREAMS = "bitstreams"
CHECKPOINT_SUFFIXES = frozenset({".tar", ".pth", ".pt", ".ckpt"})
"""A `--codec` with one of these (or a folder in it) is a checkpoint's path, not an entry."""
ERROR_GAIN = 4.0


@dataclass(frozen=True)
class _Job:
    """Bitstream files (relative to `folder`) of one codec, decoded to `out`."""

    codec: str | None
    folder: Path
    files: list[Path]
    out: Path
    machine_folder: Path | None = None
    sizes: dict[Path, tuple[int, int]] | None = None
    """(height, width) to crop each file's image to: a coded dataset's images were coded
    padded (`pad_multiple`)."""


def coded_codec(coded_dir: Path) -> str:
    """The codec entry a coded dataset was encoded with (its `provenance.json`)."""
    path = Path(coded_dir) / "provenance.json"
    try:
        stage = json.loads(path.read_text())["stage"]
    except (OSError, ValueError, KeyError):
        raise MissingInputError(
            f"{path}: missing or unreadable, so which codec wrote {coded_dir} is unknown: "
            "name it with --codec"
        ) from None
    return stage.rpartition("@")[2]  # encode@<codec>, encode-<dataset>@<codec>


def _coded_root(source: Path) -> tuple[Path, str | None] | None:
    """(coded dataset, split or None for all) when `source` is, or lies in, a coded dataset."""
    if (source / BITSTREAMS).is_dir():
        return source, None
    for path in (source, *source.parents):
        if path.parent.name == BITSTREAMS:
            return path.parent.parent, path.name
    return None


def _jobs(source: Path, codec: str | None, split: str | None, out: Path) -> list[_Job]:
    if not source.exists():
        raise MissingInputError(f"{source}: no such file or folder")
    coded = _coded_root(source)
    if coded is None:
        if source.is_dir():
            return [_Job(codec, source, bitstream_files(source), out)]
        return [_Job(codec, source.parent, [Path(source.name)], out)]
    root, own = coded
    splits = [own] if own else [split] if split else []
    splits = splits or sorted(p.name for p in (root / BITSTREAMS).iterdir() if p.is_dir())
    if codec is None and any(
        f.suffix == LEARNED_SUFFIX for f in bitstream_files(root / BITSTREAMS)
    ):
        codec = coded_codec(root)
    machine = _machine_dataset(root)
    jobs = []
    for each in splits:
        folder = root / BITSTREAMS / each
        if own is None:
            files = bitstream_files(folder)
        elif source.is_file():
            files = [source.relative_to(folder)]
        else:
            files = [source.relative_to(folder) / f for f in bitstream_files(source)]
        machine_folder = None if machine is None else machine / BITSTREAMS / each
        target = out / root.resolve().name / each
        jobs.append(_Job(codec, folder, files, target, machine_folder, _sizes(root, each)))
    return jobs


def _sizes(root: Path, split: str) -> dict[Path, tuple[int, int]] | None:
    """The size of each bitstream's image in a split of a coded dataset whose images were coded
    padded (its annotations record `pad_multiple`); None for any other."""
    annotations = root / "annotations" / f"{split}.json"
    if not annotations.is_file():
        return None
    coded = json.loads(annotations.read_text())
    if coded.get("icmflow", {}).get("pad_multiple", 1) == 1:
        return None
    from icmflow.coding.coded_dataset import bitstream_names

    images = {image["id"]: image for image in coded["images"]}
    return {
        Path(name): (images[image_id]["height"], images[image_id]["width"])
        for image_id, name in bitstream_names(root, split).items()
    }


def _machine_dataset(coded_dir: Path) -> Path | None:
    """For a scalable codec's coded dataset, its machine layer's (named in `layers.json`, a
    sibling under data/coded); else None."""
    layers = coded_dir / "layers.json"
    if not layers.is_file():
        return None
    return coded_dir.parent / json.loads(layers.read_text())["machine"]


def decode(
    sources: list[Path],
    *,
    codec: str | None,
    codec_of: Callable[[str], object],
    machine_bitstreams: Path | None,
    split: str | None,
    out: Path,
) -> list[Decoded]:
    """Decode every bitstream file the `sources` name (files, folders, coded datasets or
    their splits) to PNGs under `out`; `codec_of` builds the coder of a codec's name."""
    coders: dict[str, object] = {}
    decoded: list[Decoded] = []
    for source in sources:
        for job in _jobs(Path(source), codec, split, out):
            if job.codec is not None and job.codec not in coders:
                coders[job.codec] = codec_of(job.codec)
            coder = None if job.codec is None else coders[job.codec]
            machine = job.machine_folder or machine_bitstreams
            decoded += decode_folder(
                coder, job.folder, job.out, files=job.files, machine_folder=machine, sizes=job.sizes
            )
    if not decoded:
        raise MissingInputError(
            f"no bitstream files in {', '.join(map(str, sources))} (suffixes .bin, .jpg, ...)"
        )
    return decoded


def _default_out(path: Path) -> Path:
    parts = [p.removesuffix(".zarr") for p in Path(path).resolve().parts[-3:]]
    return Path("shown") / "-".join(parts)


def show_masks(store_path: Path, *, dataset: Path | None, images: int, out: Path | None) -> Path:
    """Each of the first `images` masks of a store over its image, beside the image."""
    from icmflow.masks.store import MaskStore

    store = MaskStore(store_path)
    source = _prepared(dataset or Path(store.attrs.get("source", "")), store_path)
    kind = store.attrs.get("kind", "object")
    colour, alpha = (EDGE_COLOUR, 1.0) if kind == "edge" else (OBJECT_COLOUR, 0.5)
    out = out or _default_out(store_path)
    for image in [im for im in source.images if im["id"] in store][:images]:
        rgb = read_rgb(source.image_path(image))
        mask = store.mask(image["id"])
        picture = side_by_side(
            [rgb, overlay(rgb, mask, colour, alpha)],
            [image["file_name"], f"{kind} mask: {mask.mean():.1%} of the pixels"],
        )
        write_png(out / Path(image["file_name"]).with_suffix(".png"), picture)
    return out


def show_coded(
    coded_dir: Path,
    *,
    split: str | None,
    dataset: Path | None,
    images: int,
    out: Path | None,
) -> Path:
    """The first `images` images of a coded dataset's split, each beside its original and
    their error, captioned with bpp and PSNR."""
    from icmflow.coding.coded_dataset import coded_split, read_bytes_per_image

    split = split or _default_split(coded_dir)
    coded = PreparedDataset.load(coded_split(coded_dir, split))
    source = _prepared(dataset or Path(coded.data["icmflow"]["source"]), coded_dir)
    originals = {image["id"]: image for image in source.images}
    sizes = read_bytes_per_image(coded_dir, split)
    out = out or _default_out(Path(coded_dir) / split)
    name = Path(coded_dir).resolve().name
    for image in coded.images[:images]:
        original = read_rgb(source.image_path(originals[image["id"]]))
        decoded = read_rgb(coded.image_path(image))
        bpp = 8 * sizes[image["id"]] / (image["width"] * image["height"])
        write_png(
            out / image["file_name"],
            comparison(original, decoded, f"{name}: {bpp:.3f} bpp"),
        )
    return out


def show_pair(decoded: Path, original: Path, out: Path | None) -> Path:
    """One decoded image beside its original and their error."""
    for path in (decoded, original):
        if not Path(path).is_file():
            raise MissingInputError(f"{path}: no such image file")
    out = out or Path("shown") / f"{Path(decoded).stem}.png"
    write_png(out, comparison(read_rgb(original), read_rgb(decoded), Path(decoded).name))
    return out


def comparison(original: np.ndarray, decoded: np.ndarray, label: str) -> np.ndarray:
    """Original, decoded (captioned with `label` and its PSNR) and their error, side by side."""
    from icmflow.evaluation.metrics import mse, psnr

    if original.shape != decoded.shape:
        raise IcmflowError(f"the images differ in size: {original.shape} and {decoded.shape}")
    return side_by_side(
        [original, decoded, difference(original, decoded, ERROR_GAIN)],
        [
            "original",
            f"{label}, {psnr(mse(original, decoded)):.2f} dB",
            f"|error| x {ERROR_GAIN:g}",
        ],
    )


def _default_split(coded_dir: Path) -> str:
    splits = sorted(p.stem for p in (Path(coded_dir) / "annotations").glob("*.json"))
    if not splits:
        raise MissingInputError(f"{coded_dir}: no coded dataset here (no annotations/<split>.json)")
    return "val" if "val" in splits else splits[0]


def _prepared(path: Path, of: Path) -> PreparedDataset:
    if not path.is_file():
        raise MissingInputError(
            f"{of}: its images are those of the prepared dataset {path}, which is not there: "
            "run icmflow from the project root, or name that JSON with --dataset"
        )
    return PreparedDataset.load(path)


def codec_of(value: str, params_path: Path, machine: Path | None) -> object:
    """The coder `value` names: a checkpoint file (with `machine`, a scalable codec's human
    layer on that machine checkpoint), else a codec entry of the params file."""
    if Path(value).is_file() or "/" in value or Path(value).suffix in CHECKPOINT_SUFFIXES:
        from icmflow.coding.decode import open_codec  # a missing file: a CheckpointError

        return open_codec(value, machine=machine)
    from icmflow.pipeline.params import load_params
    from icmflow.stages.encode import codec_spec

    return codec_spec(load_params(params_path), Paths(), value).build()
