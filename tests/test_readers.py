"""The VisDrone, Cityscapes and YOLO readers: the sample in every layout, params, real samples."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO
from typer.testing import CliRunner

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.datasets.formats.cityscapes import write_cityscapes
from icmflow.datasets.formats.yolo import read_names
from icmflow.datasets.sample import LAYOUT_CLASSES
from icmflow.masks.store import MaskStore
from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from tests.helpers.builders import build
from tests.helpers.project import REPO, real_sample

SPLIT_PATHS = {
    "visdrone": ("{split}/annotations", "{split}/images"),
    "cityscapes": ("gtFine/{split}", "leftImg8bit/{split}"),
    "yolo": ("labels/{split}", "images/{split}"),
}


def read_layout(root, layout: str, split: str, **options) -> dict:
    annotations, images = (root / p.format(split=split) for p in SPLIT_PATHS[layout])
    if layout == "yolo":
        options.setdefault("dataset_yaml", root / "dataset.yaml")
    raw = FORMATS[layout].read(annotations, images, ProblemLog("raise"), **options)
    prepared = normalise(raw, images, ProblemLog("raise"), workers=1)
    prepared["icmflow"]["counts"] = raw.counts
    return prepared


def box(mask_shape, bbox) -> np.ndarray:
    mask = np.zeros(mask_shape, dtype=bool)
    x, y, w, h = (int(v) for v in bbox)
    mask[y : y + h, x : x + w] = True
    return mask


def expected_mask(coco: COCO, image_id: int, layout: str) -> np.ndarray:
    """What each layout keeps of the COCO sample's objects, drawn with pycocotools."""
    info = coco.imgs[image_id]
    union = np.zeros((info["height"], info["width"]), dtype=bool)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    # YOLO: polygons when every object of the image is one, else boxes (a file holds one kind)
    polygons = all(
        isinstance(a["segmentation"], list) and len(a["segmentation"]) == 1
        for a in annotations
        if not a["iscrowd"]
    )
    for ann in annotations:
        if layout == "yolo" and ann["iscrowd"]:
            continue  # YOLO has no crowd
        if layout == "visdrone" or (layout == "yolo" and not polygons):
            union |= box(union.shape, ann["bbox"])  # written as boxes
        else:
            union |= coco.annToMask(ann).astype(bool)
    return union


@pytest.mark.parametrize("layout", ["visdrone", "cityscapes", "yolo"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_sample_layouts_hold_the_coco_sample_objects(
    sample_layouts, sample_prepared, layout, split, tmp_path
):
    reference = sample_prepared[split]
    coco = COCO(str(reference.path))
    dataset = read_layout(sample_layouts / layout, layout, split)
    assert len(dataset["images"]) == len(reference.images)
    store = MaskStore(build(dataset, tmp_path / f"{layout}.zarr"))
    for ours, theirs in zip(dataset["images"], reference.images, strict=True):
        assert (ours["width"], ours["height"]) == (theirs["width"], theirs["height"])
        np.testing.assert_array_equal(
            store.mask(ours["id"]), expected_mask(coco, theirs["id"], layout)
        )
    if layout != "cityscapes":  # (Cityscapes: an object fully covered by others is gone)
        classes = LAYOUT_CLASSES[layout]
        expected = sorted(
            classes[a["category_id"]]
            for a in reference.data["annotations"]
            if not a["iscrowd"] or layout == "visdrone"
        )
        if split == "val" and layout == "visdrone":  # the crowd region: an ignored region
            crowd = next(a for a in reference.data["annotations"] if a["iscrowd"])
            expected.remove(classes[crowd["category_id"]])
            expected = sorted([*expected, 0])
        assert sorted(a["category_id"] for a in dataset["annotations"]) == expected


@pytest.mark.parametrize("layout", ["visdrone", "cityscapes"])
def test_ignored_regions_param(sample_layouts, sample_prepared, layout, tmp_path):
    reference = sample_prepared["val"]
    crowd = next(a for a in reference.data["annotations"] if a["iscrowd"])
    image = next(i for i, im in enumerate(reference.images) if im["id"] == crowd["image_id"])
    kept = read_layout(sample_layouts / layout, layout, "val", ignored_regions="crowd")
    assert kept["icmflow"]["counts"] == {"ignored_regions_as_crowd": 1}
    crowds = [a for a in kept["annotations"] if a["iscrowd"]]
    assert [a["category_id"] for a in crowds] == [0 if layout == "visdrone" else 24]
    image_id = kept["images"][image]["id"]
    assert crowds[0]["image_id"] == image_id
    dropped = read_layout(sample_layouts / layout, layout, "val", ignored_regions="drop")
    assert dropped["icmflow"]["counts"] == {"ignored_regions_dropped": 1}
    assert not any(a["iscrowd"] for a in dropped["annotations"])
    assert len(dropped["annotations"]) == len(kept["annotations"]) - 1
    included = MaskStore(build(kept, tmp_path / "included.zarr")).mask(image_id)
    excluded = MaskStore(build(kept, tmp_path / "excluded.zarr", crowd=False)).mask(image_id)
    without = MaskStore(build(dropped, tmp_path / "dropped.zarr")).mask(image_id)
    np.testing.assert_array_equal(excluded, without)
    region = COCO(str(reference.path)).annToMask(crowd).astype(bool)
    if layout == "visdrone":
        region = box(region.shape, crowd["bbox"])
    assert (included & ~without).sum() > 0
    assert not (included & ~without & ~region).any()  # the difference is the region only


def test_cityscapes_caravans_are_ignored_regions(tmp_path):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        "annotations": [
            {"id": k, "image_id": 1, "category_id": c, "bbox": b, "segmentation": [], "iscrowd": 0}
            for k, (c, b) in enumerate([(29, [2, 2, 6, 5]), (26, [12, 4, 8, 8])], start=1)
        ],
    }
    write_cityscapes(tmp_path, "val", coco, [rgb])
    dataset = read_layout(tmp_path, "cityscapes", "val")
    assert [(a["category_id"], a["iscrowd"], a["area"]) for a in dataset["annotations"]] == [
        (26, 0, 64),
        (29, 1, 30),
    ]
    dropped = read_layout(tmp_path, "cityscapes", "val", ignored_regions="drop")
    assert [a["category_id"] for a in dropped["annotations"]] == [26]


def test_real_cityscapes_frankfurt1(tmp_path):
    root = real_sample("cityscapes-frankfurt1")
    labels = root / "gtFine" / "val" / "frankfurt"
    ids = np.asarray(Image.open(next(labels.glob("*_gtFine_instanceIds.png")))).astype(np.int64)
    dataset = read_layout(root, "cityscapes", "val")
    instances = {int(v): int((ids == v).sum()) for v in np.unique(ids) if v >= 1000}
    assert len(instances) == 7  # 4 persons, 3 cars
    assert len(dataset["annotations"]) == len(instances)
    coco = tmp_path / "frankfurt.json"
    coco.write_text(json.dumps(dataset))
    api = COCO(str(coco))
    by_area = sorted((a["category_id"], a["area"]) for a in dataset["annotations"])
    assert by_area == sorted((v // 1000, n) for v, n in instances.items())
    for ann in dataset["annotations"]:
        pixels = api.annToMask(ann).astype(bool)
        values = np.unique(ids[pixels])
        assert len(values) == 1 and values[0] // 1000 == ann["category_id"]  # one whole instance
        assert pixels.sum() == instances[int(values[0])] == ann["area"]
        assert ann["iscrowd"] == 0
    store = MaskStore(build(dataset, tmp_path / "frankfurt.zarr"))
    np.testing.assert_array_equal(store.mask(1), ids >= 1000)


COCO8_NAMES = {i: f"class {i}" for i in range(80)} | {45: "bowl", 49: "orange", 50: "broccoli"}
"""COCO's 80 classes (the ones image 9 shows by name), as ultralytics' coco8.yaml numbers them."""


@pytest.mark.parametrize("split", ["train", "val"])
def test_real_coco8_yolo(split, tmp_path):
    root = real_sample("coco8-yolo")
    names = tmp_path / "coco8.yaml"
    names.write_text(yaml.safe_dump({"nc": 80, "names": COCO8_NAMES}))
    dataset = read_layout(root, "yolo", split, dataset_yaml=names)
    store = MaskStore(build(dataset, tmp_path / "coco8.zarr"))
    rows = 0
    for image in dataset["images"]:
        width, height = Image.open(root / "images" / split / image["file_name"]).size
        assert (image["width"], image["height"]) == (width, height)
        label = (root / "labels" / split / image["file_name"]).with_suffix(".txt")
        ours = [a for a in dataset["annotations"] if a["image_id"] == image["id"]]
        lines = label.read_text().split("\n")
        lines = [line.split() for line in lines if line.strip()]
        assert len(ours) == len(lines)
        inside = np.zeros((height, width), dtype=bool)
        near = np.zeros((height, width), dtype=bool)
        for ann, values in zip(ours, lines, strict=True):
            assert ann["category_id"] == int(values[0])
            cx, cy, w, h = (Fraction(v) for v in values[1:])
            exact = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            assert all(
                abs(Fraction(a) - b) <= Fraction(1, 2)
                for a, b in zip(ann["bbox"], exact, strict=True)
            )
            left, top = float(exact[0]), float(exact[1])
            right, bottom = left + float(exact[2]), top + float(exact[3])
            xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5  # pixel centres
            inside |= np.outer(
                (ys > top + 0.5) & (ys < bottom - 0.5), (xs > left + 0.5) & (xs < right - 0.5)
            )
            near |= np.outer((ys > top - 1) & (ys < bottom + 1), (xs > left - 1) & (xs < right + 1))
        mask = store.mask(image["id"])
        assert mask[inside].all() and not mask[~near].any()  # each box within half a pixel
        rows += len(lines)
    assert rows == {"train": 13, "val": 17}[split]
    if split == "train":  # COCO image 9: bowls (45), broccoli (50), oranges (49)
        first = {a["category_id"] for a in dataset["annotations"] if a["image_id"] == 1}
        categories = {c["id"]: c["name"] for c in dataset["categories"]}
        assert {categories[c] for c in first} == {"bowl", "broccoli", "orange"}


def test_yolo_dataset_yaml_problems_name_the_file(tmp_path):
    path = tmp_path / "data.yaml"
    with pytest.raises(InputError, match="dataset YAML not found"):
        read_names(path)
    path.write_text("names: [a, b\n")
    with pytest.raises(InputError, match="not valid YAML"):
        read_names(path)
    path.write_text("path: .\ntrain: images/train\n")
    with pytest.raises(InputError, match=r"data.yaml: names: needs `names`"):
        read_names(path)
    path.write_text("nc: 3\nnames: [a, b]\n")
    with pytest.raises(InputError, match="nc is 3 but names lists 2 classes"):
        read_names(path)
    path.write_text("names: {0: a, 2: c}\n")
    assert read_names(path) == {0: "a", 2: "c"}


@pytest.fixture
def project(tmp_path, monkeypatch, sample_layouts):
    """A working directory whose params.yaml points every sample dataset at a copy."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, layout in (
        ("sample", "coco"),
        ("sample-visdrone", "visdrone"),
        ("sample-cityscapes", "cityscapes"),
        ("sample-yolo", "yolo"),
    ):
        shutil.copytree(sample_layouts / layout, tmp_path / layout)
        params["datasets"][key]["root"] = str(tmp_path / layout)
    params["masks"].update(n_workers=1, images_per_shard=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_prepare_and_masks_commands_read_every_layout(project):
    runner = CliRunner()
    formats = {"sample-visdrone": "visdrone", "sample-cityscapes": "cityscapes"}
    formats["sample-yolo"] = "yolo"
    for dataset, format in formats.items():
        result = runner.invoke(app, ["prepare", dataset])
        assert result.exit_code == 0, result.output
        report = json.loads((Paths().prepared(dataset) / "report.json").read_text())
        assert report["format"] == format and report["skipped"] == []
        assert report["splits"]["train"]["images"] == 10
        assert report["splits"]["val"]["images"] == 5
    report = json.loads((Paths().prepared("sample-visdrone") / "report.json").read_text())
    assert report["options"] == {"ignored_regions": "crowd"}
    assert report["splits"]["val"]["ignored_regions_as_crowd"] == 1
    result = runner.invoke(app, ["masks", "sample-cityscapes"])
    assert result.exit_code == 0, result.output
    store = MaskStore(Paths().mask_store("object", "sample-cityscapes", "val"))
    assert len(store) == 5
