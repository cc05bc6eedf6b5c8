import hashlib
import json

import numpy as np
from pycocotools.coco import COCO

from icmflow.datasets.images import read_rgb
from icmflow.datasets.sample import write_sample


def digest(folder) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_sample_is_deterministic(tmp_path):
    write_sample(tmp_path / "a", train_images=6, val_images=3, seed=3)
    write_sample(tmp_path / "b", train_images=6, val_images=3, seed=3)
    write_sample(tmp_path / "c", train_images=6, val_images=3, seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert {p.split("/")[0] for p in digest(tmp_path / "a")} == {
        "coco",
        "visdrone",
        "cityscapes",
        "yolo",
    }
    for layout in ("coco", "visdrone", "cityscapes", "yolo"):
        assert digest(tmp_path / "a" / layout) != digest(tmp_path / "c" / layout)


def test_sample_covers_the_cases_the_pipeline_must_handle(sample_root):
    train = json.loads((sample_root / "annotations" / "instances_train.json").read_text())
    val = json.loads((sample_root / "annotations" / "instances_val.json").read_text())
    annotations = train["annotations"] + val["annotations"]
    kinds = {
        "polygon": [a for a in annotations if isinstance(a["segmentation"], list)],
        "compressed RLE": [
            a
            for a in annotations
            if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
        ],
        "crowd": [a for a in annotations if a["iscrowd"]],
    }
    assert kinds["polygon"] and kinds["compressed RLE"]
    assert len(kinds["crowd"]) == 1
    assert isinstance(kinds["crowd"][0]["segmentation"]["counts"], list)
    with_objects = {a["image_id"] for a in annotations}
    assert any(im["id"] not in with_objects for im in train["images"])
    assert len({im["id"] for im in train["images"] + val["images"]}) == 15
    assert all(a["id"] >= 1 for a in annotations)


def test_objects_are_painted_where_annotated(sample_root):
    """Each annotation's pixels differ from the ring around it: objects are visible."""
    coco = COCO(str(sample_root / "annotations" / "instances_train.json"))
    image = coco.imgs[1]
    rgb = read_rgb(sample_root / "train" / image["file_name"]).astype(float)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[1])):
        mask = coco.annToMask(ann)
        assert mask.sum() == ann["area"] > 100
        x, y, w, h = (int(v) for v in ann["bbox"])
        assert min(x, y) >= 0 and x + w <= image["width"] and y + h <= image["height"]
        inside = rgb[mask.astype(bool)].mean(axis=0)
        assert np.abs(inside - rgb.mean(axis=(0, 1))).max() > 5
