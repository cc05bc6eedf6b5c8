"""Coded datasets: every image through a codec's real bitstream, in layouts downstream tools read.

A coded dataset folder holds one or more splits of a source dataset, laid out as ultralytics
reads a dataset (`data.yaml` beside `images/` and `labels/`) with COCO JSON next to it:

- `images/<split>/<stem>.png`: the decoded pixels, losslessly, exactly what the bitstream
  decodes to (decoded from the very bytes written beside it, in the same process); `<stem>` is
  the source's `file_name` without its suffix, folders kept (`datasets.file_names`: it never
  leaves the folder, and no two images of a split share one);
- `bitstreams/<split>/<stem><suffix>`: the file the codec wrote (`.bin` for learned codecs,
  see `icmflow.coding.bitstream`; `.jpg`, `.webp`, ... for classical ones);
- `annotations/<split>.json`: the source's normalised COCO JSON, `file_name`s naming the PNGs;
- `labels/<split>/<stem>.txt` (where ultralytics looks: `file_names.label_file`) and
  `data.yaml`: the same annotations for ultralytics (class indices: the categories in id
  order, `yolo_classes`; `train` and `val` name the first split when no split has that name,
  as ultralytics needs both);
- `bpp/<split>.csv`: per image, bitstream bytes, pixels and bpp, and the record that every
  reader of the rate checks the files against (`icmflow.coding.manifest`: the bitstream's path
  and SHA-256, the decoded PNG's SHA-256);
- for Cityscapes sources, `cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png` (links to
  the decoded PNGs, named as the originals) and `cityscapes/gtFine/<split>/` (the source's
  ground truth, copied: it is not coded), the layout Cityscapes tools read
  (`add_cityscapes_layout`);
- `summary.json`: per split, bpp = total bits / total pixels (not a mean of per-image bpp).

With `pad_multiple` > 1 every image is padded bottom/right to a multiple of it (its edge pixels
repeated) before the codec codes it, and the decoded image is cropped back to the image's own
size: the decoded PNG, the annotations and every metric keep the image's geometry, the bitstream
holds the padded image, and bpp counts the image's own pixels (CompressAI's evaluation pads and
counts the same way). The coded annotations record the padding (`icmflow.pad_multiple`).

Images are encoded in tasks of a few images on a dask cluster (or in this process), each worker
building the codec once. Every file is written through a rename (at an fsspec URL: as one object
in one request), and images whose bitstream and PNG already exist are not encoded again, so an
interrupted run resumes where it stopped. `_BUILDING` holds the fingerprint of the build in
progress (a folder holding another build's marker is emptied first); `_COMPLETE`, written last,
makes the dataset readable (`coded_split`, `read_bytes_per_image` refuse one without it), which
is what keeps a dataset written in place on an object store atomic. `read_bytes_per_image` also
refuses a dataset whose files no longer are what encode wrote.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from distributed import Client, as_completed
from tqdm import tqdm

from icmflow.coding.image_codec import CodecSpec, RegionCodecSpec
from icmflow.coding.manifest import BITSTREAM, DECODED_SHA256, SHA256, Written, check_rows
from icmflow.core.completion import COMPLETE, completed, mark_complete, require_complete
from icmflow.core.errors import InputError, MissingInputError
from icmflow.core.files import remove, write_bytes, write_csv, write_json, write_text
from icmflow.core.resume import fingerprint
from icmflow.core.storage import location
from icmflow.datasets.file_names import output_stem
from icmflow.datasets.formats.yolo import write_dataset_yaml, write_yolo_labels, yolo_names
from icmflow.datasets.images import read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset
from icmflow.masks.store import MaskStore

DECODED_PNG_LEVEL = 1
"""zlib level of the decoded PNGs: writing them at the default 6 took 15 % of a learned codec's
encode time on a CPU; at 1 they are about 6 % larger (Kodak, JPEG-like content)."""
BPP_FIELDS = ("image_id", "file_name", "bytes", "pixels", "bpp", BITSTREAM, SHA256, DECODED_SHA256)
BUILDING = "_BUILDING"
"""The marker of a build in progress: its fingerprint."""


def _output_stems(dataset: PreparedDataset) -> list[str]:
    """Each image's output name (`file_names.output_stem`), refusing names that would leave the
    dataset's folders or that two images share (prepare refuses both)."""
    stems = [output_stem(image["file_name"], dataset.path) for image in dataset.images]
    shared = sorted(name for name, count in Counter(stems).items() if count > 1)
    if shared:
        raise InputError(
            dataset.path,
            "",
            f"images share the stem(s) {', '.join(map(repr, shared[:5]))}: their coded files "
            "would be one file; run `icmflow prepare` again",
        )
    return stems


def _annotations(coded_dir: Path, split: str) -> Path:
    return location(coded_dir) / "annotations" / f"{split}.json"


def _require_complete(coded_dir: Path | str) -> None:
    require_complete(coded_dir, "coded dataset", "run (or rerun) its `icmflow encode` first")


def coded_split(coded_dir: Path | str, split: str) -> Path:
    """The COCO JSON of one split of a complete coded dataset (a `PreparedDataset`)."""
    _require_complete(coded_dir)
    return _annotations(coded_dir, split)


def pad_to(pixels: np.ndarray, multiple: int, mode: str = "edge") -> np.ndarray:
    """`pixels` (H×W or H×W×C) padded bottom/right to a multiple of `multiple`: with its edge
    values repeated, or zeros (`mode` constant)."""
    height, width = pixels.shape[:2]
    pad = [(0, -height % multiple), (0, -width % multiple)] + [(0, 0)] * (pixels.ndim - 2)
    return pixels if multiple == 1 else np.pad(pixels, pad, mode=mode)


def _encode_images(
    spec: CodecSpec | RegionCodecSpec,
    out: str,
    split: str,
    images: list[tuple[str, str, int]],
    pad_multiple: int = 1,
) -> dict[str, Written]:
    """Encode (source path, file stem, image id) triples into split `split` of `out` (with
    each image's ROI, for a `RegionCodecSpec`), each padded to `pad_multiple` for the codec and
    cropped back; what was written, by stem."""
    codec = spec.build()
    stores = dict(getattr(spec, "region_stores", ()))
    regions = MaskStore(stores[split]) if stores else None
    written = {}
    for source, stem, image_id in images:
        name = f"{stem}{spec.suffix}"
        bitstream, decoded = (
            location(out) / "bitstreams" / split / name,
            location(out) / "images" / split / f"{stem}.png",
        )
        if bitstream.is_file() and decoded.is_file():  # done by an earlier, interrupted run
            written[stem] = Written.of(name, bitstream.read_bytes(), decoded.read_bytes())
            continue
        rgb = read_rgb(source)
        height, width = rgb.shape[:2]
        rgb = pad_to(rgb, pad_multiple)
        if regions is None:
            coded = codec.encode(rgb)
        else:  # the padding holds no object
            roi = pad_to(_region(regions, image_id), pad_multiple, "constant")
            coded = codec.encode_region(rgb, roi)
        pixels = coded.decoded[:height, :width]
        png = write_png(decoded, pixels, compress_level=DECODED_PNG_LEVEL)
        write_bytes(bitstream, coded.data)  # last: its presence marks the image done
        written[stem] = Written.of(name, coded.data, png)
    return written


def _region(store: MaskStore, image_id: int) -> np.ndarray:
    """Image `image_id`'s ROI: its mask in `store`, which must hold it."""
    try:
        return store.mask(image_id)
    except KeyError as err:
        raise MissingInputError(
            f"{err.args[0]}: the mask store is not of this dataset; run `icmflow masks` again"
        ) from None


def _begin(out: Path, digest: str) -> None:
    """Make `out` the place of build `digest`: keep its own earlier work, empty another's."""
    building = out / BUILDING
    earlier = building.read_text() if building.exists() else completed(out)
    if earlier not in (None, digest):
        remove(out)
    write_text(building, digest)
    remove(out / COMPLETE)  # readable again only once this build has finished


def encode_dataset(
    spec: CodecSpec | RegionCodecSpec,
    splits: dict[str, PreparedDataset],
    out: Path | str,
    *,
    client: Client | None = None,
    images_per_task: int = 8,
    pad_multiple: int = 1,
) -> dict[str, dict]:
    """Encode and decode every image of each split into the folder `out` (a path or an fsspec
    URL), with the splits' annotations (COCO, YOLO labels, `data.yaml`), each image padded to
    `pad_multiple` for the codec (module doc); returns each split's summary."""
    out = location(out)
    for dataset in splits.values():
        if not dataset.images:
            raise InputError(dataset.path, "", "no images to encode: bpp would be undefined")
    padded = [pad_multiple] if pad_multiple > 1 else []  # unpadded: the fingerprint as before
    digest = fingerprint(
        spec, {split: (str(d.path), d.data) for split, d in splits.items()}, *padded
    )
    _begin(out, digest)
    summaries = {
        split: _encode_split(spec, dataset, out, split, client, images_per_task, pad_multiple)
        for split, dataset in splits.items()
    }
    write_json(out / "summary.json", summaries)
    categories = next(iter(splits.values())).data["categories"]
    paths = {split: f"images/{split}" for split in splits}
    first = next(iter(paths.values()))  # ultralytics needs `train` and `val` in every YAML
    paths = {"train": first, "val": first, **paths}
    write_dataset_yaml(out / "data.yaml", yolo_names(categories), paths)
    mark_complete(out, digest)
    remove(out / BUILDING)
    return summaries


def _encode_split(
    spec: CodecSpec | RegionCodecSpec,
    dataset: PreparedDataset,
    out: Path,
    split: str,
    client: Client | None,
    images_per_task: int,
    pad_multiple: int,
) -> dict:
    stems = _output_stems(dataset)
    jobs = [
        (str(dataset.image_path(im)), stem, im["id"])
        for im, stem in zip(dataset.images, stems, strict=True)
    ]
    tasks = [jobs[i : i + images_per_task] for i in range(0, len(jobs), images_per_task)]
    args = (spec, str(out), split)
    written: dict[str, Written] = {}
    with tqdm(total=len(jobs), desc=f"encode {split}", unit="img") as bar:
        if client is None:
            for task in tasks:
                written |= _encode_images(*args, task, pad_multiple)
                bar.update(len(task))
        else:
            futures = [
                client.submit(_encode_images, *args, task, pad_multiple, pure=False)
                for task in tasks
            ]
            for future in as_completed(futures):
                done = future.result()
                written |= done
                bar.update(len(done))
    return _write_index(dataset, stems, out, split, written, pad_multiple)


def _write_index(
    dataset: PreparedDataset,
    stems: list[str],
    out: Path,
    split: str,
    written: dict[str, Written],
    pad_multiple: int,
) -> dict:
    """The bpp table (with what was `written`, by stem) and annotations of a split whose images
    are all coded (as `stems`); its summary."""
    rows, images = [], []
    for image, stem in zip(dataset.images, stems, strict=True):
        files, pixels = written[stem], image["width"] * image["height"]
        rows.append(
            {
                "image_id": image["id"],
                "file_name": f"{stem}.png",
                "bytes": files.size,
                "pixels": pixels,
                "bpp": 8 * files.size / pixels,
                **files.fields(),
            }
        )
        images.append({**image, "file_name": f"{stem}.png"})
    write_csv(out / "bpp" / f"{split}.csv", rows, BPP_FIELDS)
    total_bits = 8 * sum(r["bytes"] for r in rows)
    total_pixels = sum(r["pixels"] for r in rows)
    summary = {
        "images": len(rows),
        "total_bits": total_bits,
        "total_pixels": total_pixels,
        "bpp": total_bits / total_pixels,
        "bpp_definition": "total bits of all bitstream files (headers included) / total pixels",
    }
    recorded = {"image_root": f"../images/{split}", "source": str(dataset.path)}
    if pad_multiple > 1:
        summary["pad_multiple"] = recorded["pad_multiple"] = pad_multiple
        summary["bpp_definition"] += (
            f" (the images' own pixels: each is coded padded to a multiple of {pad_multiple}, "
            "the padding is not counted)"
        )
    if "resize" in dataset.data.get("icmflow", {}):
        recorded["resize"] = dataset.data["icmflow"]["resize"]
    coded = {**dataset.data, "images": images, "icmflow": recorded}
    write_json(_annotations(out, split), coded, indent=None)
    write_yolo_labels(out, split, coded)
    return summary


def add_cityscapes_layout(out: Path, split: str, ground_truth: Path) -> None:
    """`out/cityscapes/`: the decoded images of `split` under their Cityscapes names (hard
    links, copies where links are refused) and the source's `gtFine/<split>` folder."""
    decoded, layout = out / "images" / split, out / "cityscapes"
    for image in sorted(decoded.rglob("*.png")):
        link = layout / "leftImg8bit" / split / image.relative_to(decoded)
        if link.exists():
            continue  # an interrupted run got here
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(image, link)
        except OSError:
            shutil.copyfile(image, link)
    shutil.copytree(ground_truth, layout / "gtFine" / split, dirs_exist_ok=True)


def bitstream_names(coded_dir: Path | str, split: str) -> dict[int, str]:
    """Each image id's bitstream file, relative to the split's bitstream folder (as encode
    recorded it in the bpp table)."""
    table = location(coded_dir) / "bpp" / f"{split}.csv"
    rows = csv.DictReader(io.StringIO(table.read_text(), newline=""))
    return {int(row["image_id"]): row[BITSTREAM] for row in rows}


def read_bytes_per_image(coded_dir: Path | str, split: str) -> dict[int, int]:
    """Bitstream bytes of each image id of one split of a complete coded dataset, once every
    bitstream and decoded PNG of the split is checked against what encode recorded."""
    _require_complete(coded_dir)
    folder = location(coded_dir)
    table = folder / "bpp" / f"{split}.csv"
    rows = list(csv.DictReader(io.StringIO(table.read_text(), newline="")))
    fix = f"rerun `icmflow encode {folder.name}`"
    return check_rows(rows, table, folder / "bitstreams" / split, folder / "images" / split, fix)
