"""Tiny datasets in every layout icmflow reads, written by the layouts' own writers, to damage."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import yaml

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS as READERS
from icmflow.datasets.formats.cityscapes import IMAGE_SUFFIX, INSTANCE_SUFFIX, write_cityscapes
from icmflow.datasets.formats.visdrone import write_visdrone
from icmflow.datasets.formats.yolo import write_dataset_yaml, write_yolo
from icmflow.datasets.images import write_png
from icmflow.pipeline.params import Params
from tests.helpers.project import REPO

FORMATS = ("coco", "visdrone", "yolo", "cityscapes")
CATEGORY = {"coco": 1, "visdrone": 4, "yolo": 0, "cityscapes": 26}
"""The one category every tiny object has: `thing`, VisDrone car, class 0, Cityscapes car."""
SIZES = ((48, 32), (40, 40), (56, 24))
BOXES = ((2, 3, 10, 8), (20, 10, 12, 9))


@dataclass
class Tiny:
    """A split `val` of three images with two boxes each, in `format`'s layout under `root`."""

    format: str
    root: Path
    coco: dict
    pixels: list[np.ndarray]
    options: dict = field(default_factory=dict)

    @property
    def annotations(self) -> Path:
        return (
            self.root
            / {
                "coco": "annotations.json",
                "visdrone": "val/annotations",
                "yolo": "labels/val",
                "cityscapes": "gtFine/val",
            }[self.format]
        )

    @property
    def images(self) -> Path:
        return (
            self.root
            / {
                "coco": "images",
                "visdrone": "val/images",
                "yolo": "images/val",
                "cityscapes": "leftImg8bit/val",
            }[self.format]
        )

    def image(self, index: int) -> Path:
        """The file of image `index` (0-based)."""
        if self.format == "cityscapes":
            return self.images / "sample" / f"sample_{index + 1:06d}_000019{IMAGE_SUFFIX}"
        return self.images / f"im{index + 1}.png"

    def label(self, index: int) -> Path:
        """The file holding image `index`'s annotations."""
        if self.format == "coco":
            return self.annotations
        if self.format == "cityscapes":
            name = self.image(index).name.removesuffix(IMAGE_SUFFIX) + INSTANCE_SUFFIX
            return self.annotations / "sample" / name
        return self.annotations / f"im{index + 1}.txt"

    def prepare(self, on_error: str = "raise") -> tuple[dict, ProblemLog]:
        problems = ProblemLog(on_error)
        raw = READERS[self.format].read(self.annotations, self.images, problems, **self.options)
        return normalise(raw, self.images, problems, workers=1), problems

    def copy(self, root: Path) -> Tiny:
        """The same dataset, copied to `root`."""
        shutil.copytree(self.root, root)
        options = {"dataset_yaml": root / "data.yaml"} if self.format == "yolo" else {}
        return replace(self, root=root, options=options)

    def params_entry(self) -> dict:
        """Its entry under `datasets` in params.yaml (one split, `val`)."""
        split = {
            "annotations": self.annotations.relative_to(self.root).as_posix(),
            "images": self.images.relative_to(self.root).as_posix(),
        }
        options = {"dataset_yaml": "data.yaml"} if self.format == "yolo" else {}
        return {"format": self.format, "root": str(self.root), "splits": {"val": split}, **options}

    def edit_json(self, change) -> None:
        coco = json.loads(self.annotations.read_text())
        change(coco)
        self.annotations.write_text(json.dumps(coco))


def tiny_coco(format: str, seed: int = 0) -> tuple[dict, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    images, annotations, pixels = [], [], []
    for image_id, (w, h) in enumerate(SIZES, start=1):
        images.append({"id": image_id, "file_name": f"im{image_id}.png", "width": w, "height": h})
        pixels.append(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        for x, y, bw, bh in BOXES:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY[format],
                    "bbox": [float(x), float(y), float(bw), float(bh)],
                    "area": bw * bh,
                    "segmentation": [],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": CATEGORY[format], "name": "thing", "supercategory": "tiny"}]
    return {"images": images, "annotations": annotations, "categories": categories}, pixels


def write_tiny(format: str, root: Path) -> Tiny:
    coco, pixels = tiny_coco(format)
    tiny = Tiny(format, root, coco, pixels)
    if format == "coco":
        tiny.images.mkdir(parents=True)
        for image, rgb in zip(coco["images"], pixels, strict=True):
            write_png(tiny.images / image["file_name"], rgb)
        tiny.annotations.write_text(json.dumps(coco))
    elif format == "visdrone":
        write_visdrone(root / "val", coco, pixels)
    elif format == "yolo":
        write_yolo(root, "val", coco, pixels)
        write_dataset_yaml(root / "data.yaml", {0: "thing"}, {"val": "images/val"})
        tiny.options = {"dataset_yaml": root / "data.yaml"}
    else:
        write_cityscapes(root, "val", coco, pixels)
    read, _ = tiny.prepare()  # undamaged, it reads back whole: a damage test starts from there
    assert len(read["images"]) == len(SIZES)
    assert len(read["annotations"]) == len(coco["annotations"])
    return tiny


def write_photos(root: Path, files: dict[str, tuple[int, int]]) -> None:
    """A folder of images without annotations (`format: images`): `root/<relative path>` of
    the given (height, width), in the format of its suffix, grey when the name says `gray`."""
    from PIL import Image

    from tests.helpers.codecs import textured_image

    for k, (name, (height, width)) in enumerate(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(textured_image(height, width, seed=k))
        image.convert("L" if "gray" in name else "RGB").save(path)


@cache
def _project_params() -> str:
    return json.dumps(yaml.safe_load((REPO / "params.yaml").read_text()))


def tiny_params(tiny: Tiny, **prepare: object) -> Params:
    """The project's params.yaml with `tiny` as dataset `tiny` and `prepare` settings."""
    raw = json.loads(_project_params())
    raw["datasets"]["tiny"] = tiny.params_entry()
    raw["prepare"].update(workers=1, **prepare)
    return Params.model_validate(raw)


def layouts(*formats: str):
    """Parametrise fixture `tiny` over `formats`."""
    return pytest.mark.parametrize("tiny", formats, indirect=True)


def name(tiny: Tiny, index: int) -> str:
    """Image `index`'s file_name."""
    return tiny.image(index).relative_to(tiny.images).as_posix()


def assert_refused(tiny: Tiny, file, entry: str, text: str, lost: set[int]) -> None:
    """`raise` names file, entry and problem; `skip` logs the same and leaves out images `lost`."""
    with pytest.raises(InputError) as err:
        tiny.prepare("raise")
    assert (err.value.file, err.value.entry) == (str(file), entry), str(err.value)
    assert text in err.value.reason
    prepared, problems = tiny.prepare("skip")
    assert any(
        (s.file, s.entry) == (str(file), entry) and text in s.reason for s in problems.skipped
    ), problems.skipped
    kept = {im["file_name"] for im in prepared["images"]}
    assert kept == {name(tiny, i) for i in range(len(SIZES)) if i not in lost}
    kept_ids = {im["id"] for im in prepared["images"]}
    assert all(a["image_id"] in kept_ids for a in prepared["annotations"])
    assert len(prepared["annotations"]) == 2 * len(kept)  # the kept images lose nothing
