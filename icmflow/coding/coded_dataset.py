"""Coded datasets: every image through a codec's real bitstream, in layouts downstream tools read.

Layout of a coded dataset folder:

- `images/<file_name stem>.png`: the decoded pixels, losslessly, exactly what the bitstream
  decodes to (decoded from the very bytes written beside it, in the same process);
- `bitstreams/<file_name stem><suffix>`: the file the codec wrote (`.bin` for learned codecs,
  see `icmflow.coding.bitstream`; `.jpg`, `.webp`, ... for classical ones);
- `annotations.json`: the source's normalised COCO JSON, `file_name`s pointing at the PNGs;
- `bpp.csv`: per image, bitstream bytes, pixels and bpp;
- `summary.json`: dataset bpp = total bits / total pixels (not a mean of per-image bpp).

Images are encoded in tasks of a few images on a dask cluster (or in this process), each worker
building the codec once. Every file is written through a rename, and images whose bitstream and
PNG already exist are not encoded again, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import csv
from pathlib import Path

from distributed import Client, as_completed
from tqdm import tqdm

from icmflow.coding.image_codec import CodecSpec
from icmflow.core.files import write_bytes, write_csv, write_json
from icmflow.datasets.images import read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset

BPP_FIELDS = ("image_id", "file_name", "bytes", "pixels", "bpp")


def _stem(file_name: str) -> str:
    return str(Path(file_name).with_suffix(""))


def _encode_images(spec: CodecSpec, out: str, images: list[tuple[str, str]]) -> int:
    """Encode (source path, file stem) pairs into `out`; returns how many were done."""
    codec = spec.build()
    for source, stem in images:
        bitstream, decoded = (
            Path(out, "bitstreams", f"{stem}{spec.suffix}"),
            Path(out, "images", f"{stem}.png"),
        )
        if bitstream.is_file() and decoded.is_file():
            continue  # done by an earlier, interrupted run
        coded = codec.encode(read_rgb(source))
        write_png(decoded, coded.decoded)
        write_bytes(bitstream, coded.data)  # last: its presence marks the image done
    return len(images)


def encode_dataset(
    spec: CodecSpec,
    dataset: PreparedDataset,
    out: Path,
    *,
    client: Client | None = None,
    images_per_task: int = 8,
) -> dict:
    """Encode and decode every image of `dataset` into the folder `out`; returns the summary."""
    jobs = [(str(dataset.image_path(im)), _stem(im["file_name"])) for im in dataset.images]
    tasks = [jobs[i : i + images_per_task] for i in range(0, len(jobs), images_per_task)]
    args = (spec, str(out))
    with tqdm(total=len(jobs), desc=f"encode {dataset.path.name}", unit="img") as bar:
        if client is None:
            for task in tasks:
                bar.update(_encode_images(*args, task))
        else:
            futures = [client.submit(_encode_images, *args, task, pure=False) for task in tasks]
            for future in as_completed(futures):
                bar.update(future.result())
    return _write_index(dataset, out, spec.suffix)


def _write_index(dataset: PreparedDataset, out: Path, suffix: str) -> dict:
    """bpp.csv, summary.json and annotations.json of a folder whose images are all coded."""
    rows, images = [], []
    for image in dataset.images:
        stem = _stem(image["file_name"])
        size = (out / "bitstreams" / f"{stem}{suffix}").stat().st_size
        pixels = image["width"] * image["height"]
        rows.append(
            {
                "image_id": image["id"],
                "file_name": f"{stem}.png",
                "bytes": size,
                "pixels": pixels,
                "bpp": 8 * size / pixels,
            }
        )
        images.append({**image, "file_name": f"{stem}.png"})
    write_csv(out / "bpp.csv", rows, BPP_FIELDS)
    total_bits = 8 * sum(r["bytes"] for r in rows)
    total_pixels = sum(r["pixels"] for r in rows)
    summary = {
        "images": len(rows),
        "total_bits": total_bits,
        "total_pixels": total_pixels,
        "bpp": total_bits / total_pixels if total_pixels else float("nan"),
        "bpp_definition": "total bits of all bitstream files (headers included) / total pixels",
    }
    write_json(out / "summary.json", summary)
    coded = {
        **dataset.data,
        "images": images,
        "icmflow": {"image_root": "images", "source": str(dataset.path)},
    }
    write_json(out / "annotations.json", coded, indent=None)
    return summary


def read_bytes_per_image(coded_dir: Path) -> dict[int, int]:
    """Bitstream bytes of each image id, from `bpp.csv`."""
    with (coded_dir / "bpp.csv").open(newline="") as handle:
        return {int(row["image_id"]): int(row["bytes"]) for row in csv.DictReader(handle)}
