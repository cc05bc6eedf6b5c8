"""Prepared datasets: normalised COCO JSON files whose `icmflow.image_root` locates the pixels.

`image_root` is stored relative to the JSON file's folder, so a prepared dataset keeps working
when the project moves or DVC checks it out elsewhere; images in a bucket are an fsspec URL
(`s3://bucket/images/val`), kept as it is, and every reader of the images reads them there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from icmflow.core.errors import InputError, MissingInputError
from icmflow.core.files import write_json
from icmflow.core.storage import is_url, location
from icmflow.datasets.coco import annotations_by_image, load_json


def write_prepared(path: Path, dataset: dict, *, image_root: Path | str, final_dir: Path) -> None:
    """Write `dataset` to `path`, recording `image_root` relative to `final_dir` (a URL as it is).

    `final_dir` is where the JSON will live once its directory is moved into place.
    """
    if is_url(image_root):
        root = str(image_root).rstrip("/")
    else:
        root = os.path.relpath(Path(image_root).resolve(), Path(final_dir).resolve())
    dataset = {**dataset, "icmflow": {**dataset.get("icmflow", {}), "image_root": root}}
    write_json(path, dataset, indent=None)


@dataclass
class PreparedDataset:
    """A normalised COCO JSON file and the image folder it names."""

    path: Path
    data: dict

    @classmethod
    def load(cls, path: Path | str) -> PreparedDataset:
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"{path}: prepared dataset not found; run `icmflow prepare`")
        data = load_json(path)
        if not data.get("images"):
            raise InputError(
                path, "", "no images: every stage would average over nothing; prepare it again"
            )
        return cls(path, data)

    @property
    def images(self) -> list[dict]:
        return self.data["images"]

    @property
    def image_root(self) -> Path:
        root = self.data["icmflow"]["image_root"]
        if is_url(root):
            return location(root)
        return (self.path.parent / root).resolve()

    def image_path(self, image: dict) -> Path:
        return self.image_root / image["file_name"]

    @cached_property
    def annotations(self) -> dict[int, list[dict]]:
        return annotations_by_image(self.data)
