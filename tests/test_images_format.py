"""`format: images`: a folder of photos as a dataset, and a minimal project of one's own on it
(`icmflow init`: one learned codec, a JPEG anchor, no tasks) from prepare to report."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.pipeline.cli import app
from icmflow.pipeline.dvcfile import render
from icmflow.pipeline.params import ParamsError, check_registered, load_params
from icmflow.pipeline.paths import Paths
from tests.helpers.layouts import write_photos
from tests.helpers.params import edit_params, learned_entry
from tests.helpers.project import real_sample

runner = CliRunner()


def read(folder, on_error: str = "raise") -> tuple[dict, ProblemLog]:
    problems = ProblemLog(on_error)
    raw = FORMATS["images"].read(None, folder, problems)
    return normalise(raw, folder, problems, workers=1), problems


def test_a_folder_with_subfolders_and_mixed_suffixes_is_a_dataset(tmp_path):
    write_photos(
        tmp_path,
        {"b.png": (40, 60), "a/c.JPG": (50, 30), "a/d.jpeg": (20, 20), "gray.bmp": (33, 47)},
    )
    (tmp_path / "notes.txt").write_text("not an image")
    dataset, problems = read(tmp_path)
    names = [image["file_name"] for image in dataset["images"]]
    assert names == ["a/c.JPG", "a/d.jpeg", "b.png", "gray.bmp"]  # sorted paths, ids 1, 2, ...
    assert [image["id"] for image in dataset["images"]] == [1, 2, 3, 4]
    assert (dataset["images"][0]["width"], dataset["images"][0]["height"]) == (30, 50)
    assert dataset["annotations"] == [] and dataset["categories"] == []
    assert dataset["icmflow"]["format"] == "images" and not problems.skipped


def test_files_differing_only_in_suffix_are_named_or_skipped(tmp_path):
    write_photos(tmp_path, {"x.png": (16, 16), "x.jpg": (16, 16), "y.png": (16, 16)})
    with pytest.raises(InputError, match=r"2 images \('x\.jpg', 'x\.png'\) share the stem 'x'"):
        read(tmp_path)
    dataset, problems = read(tmp_path, "skip")
    assert [image["file_name"] for image in dataset["images"]] == ["y.png"]
    assert len(problems.skipped) == 2


def test_a_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files here"):
        read(tmp_path / "empty")


def test_kodak_is_a_dataset():
    kodak = real_sample("kodak")
    dataset, _ = read(kodak)
    assert len(dataset["images"]) == 24
    assert {(im["width"], im["height"]) for im in dataset["images"]} == {(768, 512), (512, 768)}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """`icmflow init` on a folder of generated photos (train/ and val/), shrunk to tiny
    training, with one learned codec and one JPEG codec."""
    write_photos(tmp_path / "photos", {f"train/t{k}.png": (64, 80) for k in range(4)})
    write_photos(tmp_path / "photos", {"val/v0.jpg": (48, 72), "val/sub/v1.png": (70, 50)})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init", "--root", "photos"])
    assert result.exit_code == 0, result.output
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"].update(steps=2, patch_size=64, batch_size=2, lr_milestones=[])
    params["codecs"] = {
        "mse-1": learned_entry("mse"),
        "jpeg-q30": params["codecs"]["jpeg-q30"],
    }
    params["encode"]["n_workers"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


@pytest.mark.slow
def test_a_minimal_project_runs_prepare_to_report(project):
    params = load_params("params.yaml")
    assert params.train.split == "train" and params.encode.split == "val"
    assert not params.tasks and set(params.codecs) == {"mse-1", "jpeg-q30"}
    text = render(params, yaml.safe_load((project / "params.yaml").read_text()), project)
    assert "masks" not in yaml.safe_load(text)["stages"]  # no annotations: no object masks
    for command in (
        ["prepare", "photos"],
        ["train", "mse-1"],
        ["encode", "mse-1"],
        ["encode", "jpeg-q30"],
        ["evaluate", "mse-1"],
        ["evaluate", "jpeg-q30"],
        ["report"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
    prepared = json.loads(Paths().prepared_split("photos", "val").read_text())
    assert [im["file_name"] for im in prepared["images"]] == ["sub/v1.png", "v0.jpg"]
    rows = {row["codec"]: row for row in csv_rows(Paths().report / "rd.csv")}
    assert set(rows) == {"mse-1", "jpeg-q30"}
    for row in rows.values():
        assert float(row["bpp"]) > 0 and math.isfinite(float(row["psnr"]))
        assert row["object_psnr"] in ("", "nan")  # no objects without annotations
    coded = Paths().coded("mse-1") / "images" / "val" / "sub" / "v1.png"
    assert np.asarray(Image.open(coded)).shape == (70, 50, 3)


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_what_needs_annotations_refuses_an_images_dataset(project):
    edit_params(project, lambda p: p["codecs"].update({"object-1": learned_entry("object")}))
    with pytest.raises(ParamsError, match=r"codecs\.object-1\.objective: object trains on object"):
        check_registered(load_params("params.yaml"))
    edit_params(project, lambda p: p["codecs"].pop("object-1"))
    result = runner.invoke(app, ["masks", "photos"])
    assert result.exit_code == 1 and "has format images, without annotations" in result.output
    task = {"kind": "detection", "backend": "ultralytics", "weights": "yolo.pt"}
    edit_params(project, lambda p: p.update(tasks={"det": task}))
    with pytest.raises(ParamsError, match=r"tasks: task models are scored against annotations"):
        load_params("params.yaml")
    roi = {"family": "roi", "codec": "mse-1", "qf": 1.4}
    edit_params(project, lambda p: (p.pop("tasks"), p["codecs"].update({"roi-1": roi})))
    with pytest.raises(ParamsError, match=r"codecs\.roi-1: roi codecs code the objects' region"):
        load_params("params.yaml")


@pytest.mark.parametrize(
    ("format", "split", "message"),
    [
        ("images", {"images": ".", "annotations": "a.json"}, "format images reads images only"),
        ("coco", {"images": "."}, "annotations is required by format coco"),
    ],
)
def test_annotations_as_the_format_has_them(project, format, split, message):
    edit_params(
        project, lambda p: p["datasets"]["photos"].update(format=format, splits={"val": split})
    )
    with pytest.raises(ParamsError, match=message):
        load_params("params.yaml")
