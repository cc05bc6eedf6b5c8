"""The evaluation resize (`encode.resize`, the auxiliary-loss paper's shorter edge 800, padded
to a multiple of 64): originals resized once with their annotations and masks, every codec
coding the padded image, decoded images cropped back, bpp over the images' own pixels."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from icmflow.datasets.images import read_rgb
from icmflow.datasets.resize import resized_size, scale_annotation
from icmflow.datasets.rle import uncompressed_rle
from icmflow.evaluation.metrics import mse, psnr
from icmflow.masks.store import MaskStore
from icmflow.pipeline.cli import app
from icmflow.pipeline.dvcfile import render
from icmflow.pipeline.params import ParamsError, load_params
from icmflow.pipeline.paths import Paths
from tests.helpers.cli import ok
from tests.helpers.params import sample_params

runner = CliRunner()
EDGE, PAD = 100, 64


def test_the_shorter_edge_is_scaled_to_the_setting():
    assert resized_size(640, 480, 800) == (1067, 800)  # Detectron2: int(side * s + 0.5)
    assert resized_size(480, 640, 800) == (800, 1067)
    assert resized_size(1600, 1200, 800) == (1067, 800)  # reduced as enlarged


def test_annotations_follow_the_pixels():
    polygon = {
        "segmentation": [[10.0, 20.0, 30.0, 20.0, 30.0, 40.0]],
        "bbox": [10.0, 20.0, 20.0, 20.0],
        "area": 200.0,
        "iscrowd": 0,
    }
    scaled = scale_annotation(polygon, (100, 50), (200, 150))  # x2 across, x3 down
    assert scaled["segmentation"] == [[20.0, 60.0, 60.0, 60.0, 60.0, 120.0]]
    assert scaled["bbox"] == [20.0, 60.0, 40.0, 60.0] and scaled["area"] == 1200.0
    mask = np.zeros((50, 100), bool)
    mask[10:20, 30:50] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    region = {"size": [50, 100], "counts": rle["counts"].decode("ascii")}
    for segmentation, kind in ((region, str), (uncompressed_rle(mask), list)):
        entry = {"segmentation": segmentation, "bbox": [30, 10, 20, 10], "area": 200, "iscrowd": 1}
        out = scale_annotation(entry, (100, 50), (200, 150))["segmentation"]
        assert out["size"] == [150, 200] and isinstance(out["counts"], kind)
        rle = out if kind is str else mask_utils.frPyObjects(out, 150, 200)
        resized = mask_utils.decode(rle).astype(bool)
        expected = np.zeros((150, 200), bool)
        expected[30:60, 60:100] = True
        assert (resized == expected).all()


@pytest.fixture
def project(tmp_path, monkeypatch, sample_root):
    params = sample_params(tmp_path, sample_root, {"jpeg-q40": {"family": "jpeg", "quality": 40}})
    params["encode"]["resize"] = {"shorter_edge": EDGE, "pad_multiple": PAD}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_codecs_code_the_resized_padded_images_and_are_measured_on_the_resized(project):
    for command in (
        ("prepare", "sample"),
        ("masks", "sample"),
        ("resize", "sample"),
        ("encode", "jpeg-q40"),
        ("evaluate", "jpeg-q40"),
        ("report",),
    ):
        ok(*command)
    paths = Paths()
    prepared = json.loads(paths.prepared_split("sample", "val").read_text())
    resized = json.loads((paths.resized("sample") / "val.json").read_text())
    assert resized["icmflow"]["resize"] == {"shorter_edge": EDGE, "pad_multiple": PAD}
    sizes = {}
    for before, after in zip(prepared["images"], resized["images"], strict=True):
        size = resized_size(before["width"], before["height"], EDGE)
        assert (after["width"], after["height"]) == size and min(size) == EDGE
        image = paths.resized("sample") / "images" / "val" / after["file_name"]
        assert Image.open(image).size == size
        sizes[after["id"]] = size
    # the masks are those of the resized images: the originals' masks, resized, to the edges
    store, originals = (
        MaskStore(paths.resized("sample") / "object" / "val.zarr"),
        MaskStore(paths.mask_store("object", "sample", "val")),
    )
    for image_id, size in sizes.items():
        expected = np.asarray(Image.fromarray(originals.mask(image_id)).resize(size))
        found = store.mask(image_id)
        assert found.shape == expected.shape and (found != expected).mean() < 0.02
    coded = paths.coded("jpeg-q40")
    table = list(csv.DictReader((coded / "bpp" / "val.csv").open()))
    for row in table:
        width, height = sizes[int(row["image_id"])]
        decoded = read_rgb(coded / "images" / "val" / row["file_name"])
        assert decoded.shape == (height, width, 3)  # cropped back
        padded = Image.open(coded / "bitstreams" / "val" / row["bitstream"]).size
        assert padded == (-(-width // PAD) * PAD, -(-height // PAD) * PAD)  # coded padded
        assert int(row["pixels"]) == width * height  # bpp: the image's own pixels
        assert float(row["bpp"]) == 8 * int(row["bytes"]) / (width * height)
    per_image = {
        r["image_id"]: r
        for r in csv.DictReader(paths.metrics("jpeg-q40").joinpath("per_image.csv").open())
    }
    first = resized["images"][0]
    original = read_rgb(paths.resized("sample") / "images" / "val" / first["file_name"])
    decoded = read_rgb(coded / "images" / "val" / first["file_name"])
    assert float(per_image[str(first["id"])]["psnr"]) == pytest.approx(psnr(mse(original, decoded)))
    metrics = json.loads((paths.metrics("jpeg-q40") / "metrics.json").read_text())
    assert metrics["resize"] == {"shorter_edge": EDGE, "pad_multiple": PAD}
    provenance = json.loads((coded / "provenance.json").read_text())
    assert "data/resized/sample/val.json" in provenance["inputs"]
    assert "resized to a shorter edge of 100 px" in (paths.report / "rd.md").read_text()
    # decode gives the images as the coded dataset has them: cropped
    result = runner.invoke(app, ["decode", str(coded), "--out", "decoded"])
    assert result.exit_code == 0, result.output
    again = read_rgb(project / "decoded" / "jpeg-q40" / "val" / first["file_name"])
    assert (again == decoded).all()


def test_dvc_reads_the_resized_originals(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    stages = yaml.safe_load(render(load_params("params.yaml"), raw, project))["stages"]
    resize = stages["resize"]
    assert resize["foreach"]["sample"]["d0"] == "data/prepared/sample"
    item = resize["foreach"]["sample"]
    assert {v for k, v in item.items() if k.startswith("p")} == {
        "encode.dataset",
        "encode.split",
        "encode.resize",
    }
    assert resize["do"]["outs"] == ["data/resized/${key}"]
    assert stages["encode"]["foreach"]["jpeg-q40"]["d0"] == "data/resized/sample"
    evaluated = stages["evaluate"]["do"]["deps"]
    assert "data/resized/sample" in evaluated and "data/masks/sample/object" not in evaluated
    assert "encode.resize" in stages["evaluate"]["do"]["params"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["masks"].update(source="sam-boxes"),
            "encode.resize: the resized images' object masks are drawn from the scaled",
        ),
        (
            lambda p: p["datasets"]["sample"].update(format="cityscapes"),
            "encode.resize: dataset 'sample' is Cityscapes",
        ),
        (
            lambda p: p["encode"]["resize"].update(pad_multiple=0),
            "encode.resize.pad_multiple: Input should be greater than 0",
        ),
    ],
)
def test_resizes_that_cannot_hold_are_refused(project, change, message):
    params = yaml.safe_load((project / "params.yaml").read_text())
    change(params)
    params["sam"]["checkpoint"] = "sam.pth"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=message):
        load_params("params.yaml")


def test_coding_before_the_resize_names_it(project):
    ok("prepare", "sample")
    result = runner.invoke(app, ["encode", "jpeg-q40"])
    assert result.exit_code == 1
    assert "data/resized/sample/val.json: not found; run `icmflow resize sample` first" in (
        result.output
    )
    result = runner.invoke(app, ["resize", "nope"])
    assert result.exit_code == 1 and "dataset 'nope' is not coded" in result.output
