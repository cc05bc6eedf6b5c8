"""What conveying the ROI costs the `roi` codec family: its latent-resolution ROI map per image.

For every image of a COCO instances JSON, the ROI is the union of its instance masks (crowds
included), as `masks@` makes the object mask; the map is `icmflow.coding.roi`'s (one bit per
16×16 block of the image padded to a multiple of 64), stored as the bitstream's first string.
Baseline: the same map at one bit per element, bit-packed without deflate. Prints bytes per
image and bpp of both (each with the string's length prefix) and their ratio.

    python benchmarks/roi_map.py                # ../shared/samples/coco-val158
    python benchmarks/roi_map.py --annotations instances_val2017.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO

from icmflow.coding.roi import latent_roi, pack_roi

SAMPLES = Path(
    os.environ.get("ICMFLOW_SAMPLES", Path(__file__).resolve().parents[2] / "shared" / "samples")
)


def roi_map(coco: COCO, image: dict) -> np.ndarray:
    height, width = image["height"], image["width"]
    mask = np.zeros((height, width), dtype=bool)
    for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
        mask |= coco.annToMask(annotation).astype(bool)
    padded = F.pad(torch.from_numpy(mask).float(), (0, -width % 64, 0, -height % 64))
    return latent_roi(padded, (padded.shape[0] // 16, padded.shape[1] // 16)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = SAMPLES / "coco-val158" / "instances_val2017.json"
    parser.add_argument("--annotations", type=Path, default=default)
    args = parser.parse_args()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(args.annotations))
    images = coco.loadImgs(coco.getImgIds())
    deflated, packed, pixels = [], [], 0
    for image in images:
        found = roi_map(coco, image)
        deflated.append(len(pack_roi(found)) + 1)  # + the string's length (one byte)
        packed.append(4 + -(-found.size // 8) + 1)  # height, width, the bits; length
        pixels += image["height"] * image["width"]
    for name, sizes in (("bit-packed (baseline)", packed), ("deflated (icmflow)", deflated)):
        print(f"{name}: {np.mean(sizes):.1f} bytes/image, {8 * sum(sizes) / pixels:.5f} bpp")
    print(f"{len(images)} images; deflated / bit-packed: {sum(deflated) / sum(packed):.3f}")


if __name__ == "__main__":
    main()
