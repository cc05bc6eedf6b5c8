"""Coded datasets: every image through the entropy coder, stored as downstream tools read them.

Layout of a coded dataset folder:

- `images/<file_name stem>.png`: the decoded pixels, losslessly, exactly what the bitstream
  decodes to (decoded from the very bytes written beside it);
- `bitstreams/<file_name stem>.bin`: the bitstream (see `icmflow.coding.bitstream`);
- `annotations.json`: the source's normalised COCO JSON, `file_name`s pointing at the PNGs;
- `bpp.csv`: per image, bitstream bytes, pixels and bpp;
- `summary.json`: dataset bpp = total bits / total pixels (not a mean of per-image bpp).
"""

from __future__ import annotations

import csv
from pathlib import Path

from compressai.models import CompressionModel
from tqdm import tqdm

from icmflow.coding.codec import compress_image, decompress_image
from icmflow.datasets.images import read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset
from icmflow.files import write_json

BPP_FIELDS = ("image_id", "file_name", "bytes", "pixels", "bpp")


def _stem(file_name: str) -> str:
    return str(Path(file_name).with_suffix(""))


def encode_dataset(model: CompressionModel, dataset: PreparedDataset, out: Path) -> dict:
    """Encode and decode every image of `dataset` into the folder `out`; returns the summary."""
    rows = []
    images = []
    for image in tqdm(dataset.images, desc=f"encode {dataset.path.name}", unit="img"):
        rgb = read_rgb(dataset.image_path(image))
        stream = compress_image(model, rgb)
        stem = _stem(image["file_name"])
        bitstream_path = out / "bitstreams" / f"{stem}.bin"
        bitstream_path.parent.mkdir(parents=True, exist_ok=True)
        bitstream_path.write_bytes(stream)
        decoded_path = out / "images" / f"{stem}.png"
        decoded_path.parent.mkdir(parents=True, exist_ok=True)
        write_png(decoded_path, decompress_image(model, stream))
        pixels = rgb.shape[0] * rgb.shape[1]
        rows.append(
            {
                "image_id": image["id"],
                "file_name": f"{stem}.png",
                "bytes": len(stream),
                "pixels": pixels,
                "bpp": 8 * len(stream) / pixels,
            }
        )
        images.append({**image, "file_name": f"{stem}.png"})
    with (out / "bpp.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, BPP_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
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
