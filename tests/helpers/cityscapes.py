"""A Cityscapes folder's images as a prepared dataset, as the evaluations read them."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from icmflow.datasets.formats.cityscapes import IMAGE_SUFFIX
from icmflow.datasets.prepared import PreparedDataset


def split_images(root: Path, split: str) -> PreparedDataset:
    """The images of `root/leftImg8bit/<split>` as a prepared dataset's image entries."""
    images = []
    folder = root / "leftImg8bit" / split
    for number, path in enumerate(sorted(folder.rglob(f"*{IMAGE_SUFFIX}")), start=1):
        with Image.open(path) as image:
            width, height = image.size
        name = path.relative_to(folder).as_posix()
        images.append({"id": number, "file_name": name, "width": width, "height": height})
    assert images, f"no images under {folder}"
    return PreparedDataset(root / f"{split}.json", {"images": images, "categories": []})
