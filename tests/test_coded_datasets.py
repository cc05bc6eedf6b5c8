"""Several coded datasets per codec (`encode.datasets`): COCO for machines and photos for
humans, each coded, evaluated and reported on its own, with its own stages."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from icmflow.pipeline.cli import app
from icmflow.pipeline.dvcfile import render
from icmflow.pipeline.params import ParamsError, load_params
from icmflow.pipeline.paths import Paths
from tests.helpers.cli import ok
from tests.helpers.layouts import write_photos
from tests.helpers.params import edit_params, learned_entry, sample_params

runner = CliRunner()
CODECS = {f"jpeg-q{q}": {"family": "jpeg", "quality": q} for q in (10, 40)}
CODECS |= {f"webp-q{q}": {"family": "webp", "quality": q} for q in (10, 40)}


@pytest.fixture
def project(tmp_path, monkeypatch, sample_root):
    """The sample (COCO, annotated) as `encode.dataset` and a folder of photos (format images)
    in `encode.datasets`, classical codecs only."""
    params = sample_params(tmp_path, sample_root, CODECS)
    write_photos(tmp_path / "photos", {"p1.png": (200, 180), "sub/p2.jpg": (170, 210)})
    photos = {"format": "images", "root": "photos", "splits": {"all": {"images": "."}}}
    params["datasets"]["photos"] = photos
    params["encode"]["datasets"] = {"photos": {}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def stages(project) -> dict:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    return yaml.safe_load(render(load_params("params.yaml"), raw, project))["stages"]


def test_each_dataset_is_coded_evaluated_and_reported_on_its_own(project):
    ok("prepare", "sample")
    ok("prepare", "photos")
    ok("masks", "sample")
    for codec in CODECS:
        for extra in ([], ["--dataset", "photos"]):
            ok("encode", codec, *extra)
            ok("evaluate", codec, *extra)
    ok("report")
    paths = Paths()
    coded = paths.coded("jpeg-q10", "photos")
    assert coded.as_posix() == "data/coded-photos/jpeg-q10"
    assert sorted(p.name for p in (coded / "bitstreams" / "all").rglob("*.jpg")) == [
        "p1.jpg",
        "p2.jpg",
    ]
    assert json.loads((coded / "provenance.json").read_text())["stage"] == "encode-photos@jpeg-q10"
    photos = json.loads((paths.metrics("jpeg-q10", "photos") / "metrics.json").read_text())
    assert photos["images"] == 2 and photos["object_psnr"] is None  # no annotations
    sample = json.loads((paths.metrics("jpeg-q10") / "metrics.json").read_text())
    assert sample["images"] == 5 and math.isfinite(sample["object_psnr"])
    # the primary's report where it always was, the photos' in a folder of it
    report = paths.report
    primary = {row["codec"]: float(row["bpp"]) for row in rows(report / "rd.csv")}
    assert set(primary) == set(CODECS)
    assert primary["jpeg-q10"] == pytest.approx(sample["bpp"])
    extra = {row["codec"]: float(row["bpp"]) for row in rows(report / "photos" / "rd.csv")}
    assert extra["jpeg-q10"] == pytest.approx(photos["bpp"]) != pytest.approx(sample["bpp"])
    for name in ("psnr_bpp.png", "ms_ssim_bpp.png", "bd_rate.json", "rd.md", "rd_webp.csv"):
        assert (report / "photos" / name).is_file(), name
    assert not (report / "photos" / "object_psnr_bpp.png").exists()
    assert (report / "object_psnr_bpp.png").is_file()
    bd = json.loads((report / "photos" / "bd_rate.json").read_text())
    assert {(b["test"], b["quality"]) for b in bd} == {("webp", "psnr"), ("webp", "ms_ssim")}
    assert {b["quality"] for b in json.loads((report / "bd_rate.json").read_text())} == {
        "psnr",
        "object_psnr",
        "ms_ssim",
    }
    assert "[photos](photos/rd.md)" in (report / "rd.md").read_text()
    assert "photos has no annotations" in (report / "photos" / "rd.md").read_text()


def test_a_dataset_may_be_coded_by_some_codecs(project):
    edit_params(project, lambda p: p["encode"]["datasets"]["photos"].update(codecs=["jpeg-q10"]))
    found = stages(project)
    assert set(found["encode-photos"]["foreach"]) == {"jpeg-q10"}
    assert set(found["encode"]["foreach"]) == set(CODECS)
    result = runner.invoke(app, ["encode", "webp-q10", "--dataset", "photos"])
    assert result.exit_code == 1
    assert "encode.datasets.photos.codecs does not list codec 'webp-q10'" in result.output


def test_each_coded_dataset_has_stages_of_its_own(project):
    edit_params(project, lambda p: p["encode"]["datasets"]["photos"].update(split="all"))
    found = stages(project)
    encode, evaluate = found["encode-photos"], found["evaluate-photos"]
    assert encode["do"]["cmd"] == "icmflow encode ${key} --dataset photos"
    assert evaluate["do"]["cmd"] == "icmflow evaluate ${key} --dataset photos"
    assert encode["do"]["outs"] == ["data/coded-photos/${key}"]
    assert evaluate["do"]["metrics"] == ["results/metrics-photos/${key}/metrics.json"]
    assert encode["foreach"]["jpeg-q10"]["d0"] == "data/prepared/photos"
    # its own params only: editing it reruns its stages, not the primary's
    assert "encode.datasets.photos.split" in encode["do"]["params"]
    assert not any("photos" in str(p) for p in found["encode"]["do"]["params"])
    assert "data/masks/photos/object" not in evaluate["do"]["deps"]  # no annotations
    assert "data/masks/sample/object" in found["evaluate"]["do"]["deps"]
    assert {"results/metrics", "results/metrics-photos"} <= set(found["report"]["deps"])
    assert "encode.datasets" in found["report"]["params"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda e: e["datasets"].update(sample={}),
            "encode.datasets.sample: is encode.dataset, coded already",
        ),
        (lambda e: e["datasets"].update(nope={}), "encode.datasets.nope: 'nope' is not under"),
        (
            lambda e: e["datasets"]["photos"].update(split="val"),
            "encode.datasets.photos.split: 'val' is not a split of dataset 'photos'",
        ),
        (
            lambda e: e["datasets"]["photos"].update(codecs=["jpeg-q99"]),
            r"encode.datasets.photos.codecs: \['jpeg-q99'\] are not under codecs",
        ),
    ],
)
def test_coded_datasets_are_checked(project, change, message):
    edit_params(project, lambda p: change(p["encode"]))
    with pytest.raises(ParamsError, match=message):
        load_params("params.yaml")


def test_a_split_is_needed_where_the_dataset_has_several(project):
    edit_params(
        project,
        lambda p: p["encode"].update(dataset="photos", split="all", datasets={"sample": {}}),
    )
    with pytest.raises(ParamsError, match=r"encode.datasets.sample.split: dataset 'sample' has"):
        load_params("params.yaml")
    edit_params(project, lambda p: p["encode"]["datasets"]["sample"].update(split="val"))
    assert [(c.dataset, c.split) for c in load_params("params.yaml").coded_sets()] == [
        ("photos", "all"),
        ("sample", "val"),
    ]


def test_codecs_that_cannot_code_a_dataset_are_named(project):
    def roi(params):
        params["codecs"]["mse-1"] = learned_entry("mse")
        params["codecs"]["roi-1"] = {"family": "roi", "codec": "mse-1", "qf": 1.4}

    edit_params(project, roi)
    with pytest.raises(ParamsError, match=r"encode.datasets.photos.codecs: roi-1 is a roi codec"):
        load_params("params.yaml")
    edit_params(project, lambda p: p["encode"]["datasets"]["photos"].update(codecs=["mse-1"]))
    assert load_params("params.yaml").coded_set("photos").codecs == ("mse-1",)


def test_a_coded_dataset_of_its_own_resize(project):
    """`encode.datasets.photos.resize`: its resize@ stage, its codecs on the resized photos;
    the primary's stages untouched."""
    edit_params(
        project, lambda p: p["encode"]["datasets"]["photos"].update(resize={"shorter_edge": 96})
    )
    found = stages(project)
    assert set(found["resize"]["foreach"]) == {"photos"}
    assert found["resize"]["foreach"]["photos"]["p0"] == "encode.datasets.photos.resize"
    assert found["encode-photos"]["foreach"]["jpeg-q10"]["d0"] == "data/resized/photos"
    assert found["encode"]["foreach"]["jpeg-q10"]["d0"] == "data/prepared/sample"
    ok("prepare", "photos")
    ok("resize", "photos")
    ok("encode", "jpeg-q10", "--dataset", "photos")
    ok("evaluate", "jpeg-q10", "--dataset", "photos")
    coded = json.loads(
        (Paths().coded("jpeg-q10", "photos") / "annotations" / "all.json").read_text()
    )
    assert {min(im["width"], im["height"]) for im in coded["images"]} == {96}
    metrics = json.loads((Paths().metrics("jpeg-q10", "photos") / "metrics.json").read_text())
    assert metrics["resize"] == {"shorter_edge": 96, "pad_multiple": 1}
    assert not (Paths().resized("photos") / "object").exists()  # no annotations, no masks
