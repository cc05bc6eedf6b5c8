"""Dataset entries: several COCO annotation files per split (merged), and a dataset's own
`on_error`, which overrides `prepare.on_error` (and alone reruns its prepare@ under DVC)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from icmflow.core.errors import InputError, ProblemLog
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.pipeline.cli import app
from icmflow.pipeline.dvcfile import render
from icmflow.pipeline.params import ParamsError, load_params
from icmflow.pipeline.paths import Paths
from tests.helpers.params import edit_params
from tests.helpers.project import REPO

runner = CliRunner()


@pytest.fixture
def parts(tmp_path, sample_root):
    """The sample's val split cut into two instances JSONs (first two images, the rest), both
    numbering their images from 1 as separate exports do."""
    coco = json.loads((sample_root / "annotations" / "instances_val.json").read_text())
    halves = []
    for images in (coco["images"][:2], coco["images"][2:]):
        ids = {image["id"]: k for k, image in enumerate(images, start=1)}
        halves.append(
            {
                **coco,
                "images": [{**image, "id": ids[image["id"]]} for image in images],
                "annotations": [
                    {**a, "image_id": ids[a["image_id"]]}
                    for a in coco["annotations"]
                    if a["image_id"] in ids
                ],
            }
        )
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, half in zip(paths, halves, strict=True):
        path.write_text(json.dumps(half))
    return coco, halves, paths


def read(paths, images, on_error="raise"):
    problems = ProblemLog(on_error)
    raw = FORMATS["coco"].read(paths, images, problems)
    return raw, normalise(raw, images, problems, workers=1)


def test_two_files_are_one_split_with_every_image_and_object(parts, sample_root):
    coco, halves, paths = parts
    raw, merged = read(paths, sample_root / "val")
    assert len(merged["images"]) == len(coco["images"])
    assert len(merged["annotations"]) == len(coco["annotations"])
    names = {im["id"]: im["file_name"] for im in merged["images"]}
    # the second file's ids (1, 2, ...) are shifted by the first's largest (2)
    assert names == {
        k: im["file_name"]
        for k, im in enumerate([*halves[0]["images"], *halves[1]["images"]], start=1)
    }
    by_name = {}
    for a in merged["annotations"]:
        by_name.setdefault(names[a["image_id"]], []).append(a["bbox"])
    originals = {im["id"]: im["file_name"] for im in coco["images"]}
    expected = {}
    for a in coco["annotations"]:
        expected.setdefault(originals[a["image_id"]], []).append(a["bbox"])
    assert by_name == expected  # every object still on its own image
    assert raw.counts == {"annotation_files": 2, "images_renumbered": len(halves[1]["images"])}


def test_unique_ids_are_kept(parts, sample_root):
    coco, halves, paths = parts
    shift = {**halves[1]}
    shift["images"] = [{**im, "id": im["id"] + 100} for im in halves[1]["images"]]
    shift["annotations"] = [
        {**a, "image_id": a["image_id"] + 100} for a in halves[1]["annotations"]
    ]
    paths[1].write_text(json.dumps(shift))
    raw, merged = read(paths, sample_root / "val")
    assert [im["id"] for im in merged["images"]][2:] == [101, 102, 103][: len(coco["images"]) - 2]
    assert raw.counts["images_renumbered"] == 0


def test_conflicting_categories_are_refused_naming_both_files(parts, sample_root):
    _, halves, paths = parts
    renamed = {**halves[1], "categories": [{**c} for c in halves[1]["categories"]]}
    renamed["categories"][0]["name"] = "wheel"
    paths[1].write_text(json.dumps(renamed))
    first = halves[0]["categories"][0]
    with pytest.raises(InputError) as err:
        read(paths, sample_root / "val", "skip")  # never skipped
    assert err.value.file == str(paths[1]) and err.value.entry == f"category id {first['id']}"
    assert f"named 'wheel' here but {first['name']!r} in {paths[0]}" in err.value.reason
    renumbered = {**halves[1], "categories": [{**c} for c in halves[1]["categories"]]}
    renumbered["categories"][0]["id"] = 99
    paths[1].write_text(json.dumps(renumbered))
    with pytest.raises(InputError, match=rf"has id 99 here but {first['id']} in"):
        read(paths, sample_root / "val")


def test_an_image_in_two_files_is_refused(parts, sample_root):
    _, halves, paths = parts
    twice = {**halves[1], "images": [*halves[1]["images"], {**halves[0]["images"][0], "id": 50}]}
    paths[1].write_text(json.dumps(twice))
    with pytest.raises(InputError) as err:
        read(paths, sample_root / "val")
    assert err.value.file == str(paths[1])
    assert f"image {halves[0]['images'][0]['file_name']!r} is listed in {paths[0]}" in str(
        err.value
    )


def test_categories_of_both_files_are_merged(parts, sample_root):
    _, halves, paths = parts
    extra = {**halves[1], "categories": [*halves[1]["categories"], {"id": 9, "name": "ring"}]}
    paths[1].write_text(json.dumps(extra))
    _, merged = read(paths, sample_root / "val")
    assert [c["id"] for c in merged["categories"]] == [
        *(c["id"] for c in halves[0]["categories"]),
        9,
    ]


@pytest.fixture
def project(tmp_path, monkeypatch, sample_root):
    """Two datasets of the sample: `sample` (one JSON a split) and `parts` (val in two)."""
    shutil.copytree(sample_root, tmp_path / "coco")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    sample = params["datasets"]["sample"]
    sample["root"] = str(tmp_path / "coco")
    parts = {
        "format": "coco",
        "root": str(tmp_path / "coco"),
        "splits": {"val": {"images": "val", "annotations": ["a.json", "b.json"]}},
    }
    params["datasets"] = {"sample": sample, "parts": parts}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_prepare_merges_the_files_of_a_split(project, parts):
    _, _, paths = parts
    for path in paths:
        shutil.copy(path, project / "coco" / path.name)
    result = runner.invoke(app, ["prepare", "parts"])
    assert result.exit_code == 0, result.output
    merged = json.loads(Paths().prepared_split("parts", "val").read_text())
    single = json.loads((project / "coco" / "annotations" / "instances_val.json").read_text())
    assert len(merged["images"]) == len(single["images"])
    report = json.loads((Paths().prepared("parts") / "report.json").read_text())
    assert report["splits"]["val"]["annotation_files"] == 2


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"format": "yolo", "dataset_yaml": "d.yaml"},
            "format yolo reads one annotation folder per split",
        ),
        ({"format": "coco", "annotations": []}, "an empty list; name a file"),
    ],
)
def test_a_list_only_where_files_are_merged(project, entry, message):
    def change(params):
        dataset = params["datasets"]["parts"]
        annotations = entry.get("annotations", ["a", "b"])
        dataset["splits"]["val"]["annotations"] = annotations
        dataset.update({k: v for k, v in entry.items() if k != "annotations"})

    edit_params(project, change)
    with pytest.raises(ParamsError, match=message):
        load_params("params.yaml")


def break_first_polygon(path) -> None:
    coco = json.loads(path.read_text())
    polygon = next(a for a in coco["annotations"] if isinstance(a["segmentation"], list))
    polygon["segmentation"][0][0] = -300.0
    path.write_text(json.dumps(coco))


def test_a_datasets_own_on_error_overrides_prepare_on_error(project):
    """One broken polygon: `parts` skips it (its own on_error), `sample` stops (raise)."""
    val = project / "coco" / "annotations" / "instances_val.json"
    break_first_polygon(val)
    edit_params(
        project,
        lambda p: p["datasets"]["parts"].update(
            on_error="skip", splits={"val": {"images": "val", "annotations": [str(val)]}}
        ),
    )
    result = runner.invoke(app, ["prepare", "sample"])
    assert result.exit_code == 1 and "outside the" in result.output
    result = runner.invoke(app, ["prepare", "parts"])
    assert result.exit_code == 0, result.output
    report = json.loads((Paths().prepared("parts") / "report.json").read_text())
    assert report["on_error"] == "skip" and len(report["skipped"]) == 1
    provenance = json.loads((Paths().prepared("parts") / "provenance.json").read_text())
    assert provenance["params"]["prepare"]["on_error"] == "skip"


def test_dvc_tracks_prepare_on_error_only_for_the_datasets_without_their_own(project):
    edit_params(project, lambda p: p["datasets"]["parts"].update(on_error="skip"))
    params = load_params("params.yaml")
    stages = yaml.safe_load(
        render(params, yaml.safe_load((project / "params.yaml").read_text()), project)
    )["stages"]
    items = stages["prepare"]["foreach"]
    own = {key: {v for k, v in item.items() if k.startswith("p")} for key, item in items.items()}
    assert own == {
        "sample": {"datasets.sample", "prepare.on_error"},
        "parts": {"datasets.parts"},
    }
    assert "prepare.on_error" not in stages["prepare"]["do"]["params"]
