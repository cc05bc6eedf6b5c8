"""studies/coco/params.yaml (the real-data study) through `icmflow pipeline` + `dvc repro` at tiny
size, on a few real COCO images laid out as ../shared lays them out beside a copy of the project
(skipped without ../shared): its relative paths to the data and detectors as committed, masks
from the real polygons and crowd regions, a base codec and an MSE and an object codec fine-tuned
from it, JPEG (the anchor), both detectors on every source, one fine-tuning, the
bit maps and the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO

from benchmarks.study import TOY_CODECS, WEIGHTS, shared_subset, toy
from icmflow.masks.store import MaskStore
from icmflow.pipeline.params import load_params
from tests.helpers.dvc import copy_project, ran_stages, run
from tests.helpers.project import REPO, real_sample

pytestmark = pytest.mark.slow
STUDY = REPO / "studies" / "coco"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    samples = real_sample("coco-val158").parent
    real_sample("coco-train160")
    for name in WEIGHTS:
        if not (samples.parent / "models" / name).is_file():
            pytest.skip(f"{samples.parent / 'models' / name} not found")
    top = tmp_path_factory.mktemp("study")
    # a few images laid out as ../shared has them, beside the repository's copy
    kept = shared_subset(samples, samples.parent / "models", top / "shared")
    root = copy_project(top / "repo")
    project = root / "studies" / "coco"
    raw = yaml.safe_load((project / "params.yaml").read_text())
    toy(raw)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["icmflow", "--params", "studies/coco/params.yaml", "pipeline"], root)
    ran = ran_stages(run(["dvc", "repro"], project, pythonpath=root).stdout)
    return project, kept, ran


def test_the_study_reads_shared_beside_the_repository():
    """The committed paths are relative, and lead from studies/coco to ../shared beside the
    repository (a fresh clone has nothing else); nothing of it is in the repository."""
    params = load_params(STUDY / "params.yaml")
    for name, entry in params.datasets.items():
        assert not Path(entry.root).is_absolute(), name
        assert (STUDY / entry.root).resolve() == (REPO.parent / "shared" / "samples").resolve()
    for name, task in params.tasks.items():
        assert not Path(task.weights).is_absolute(), name
        assert (STUDY / task.weights).resolve().parent == (REPO.parent / "shared" / "models")
    gpu = load_params(STUDY / "params-gpu.yaml")
    assert gpu.datasets.keys() == params.datasets.keys() and gpu.tasks.keys() == params.tasks.keys()


def test_every_stage_ran_and_depends_on_shared_by_its_relative_path(study):
    project, _, ran = study
    sources = ("original", *TOY_CODECS)
    expected = {f"infer@{s}-{t}" for s in sources for t in ("yolov5n", "yolov8n")}
    expected |= {f"train@{c}" for c in ("base", "mse-2", "object-2")}
    expected |= {"finetune@object-2-yolov5n", "bitmaps@mse-2-vs-object-2", "report"}
    assert expected <= ran
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert lock["prepare@coco"]["deps"][0]["path"] == "../../../shared/samples"
    upstream = run(["dvc", "dag", "--outs", "train@object-2"], project).stdout
    assert "models/base/checkpoint.pth.tar" in upstream


def test_object_masks_are_the_real_polygons_and_crowd_regions(study):
    project, kept, _ = study
    coco = COCO(str(project / "../../../shared/samples/coco-val158/instances_val2017.json"))
    store = MaskStore(project / "data" / "masks" / "coco" / "object" / "val.zarr")
    crowds = 0
    for image_id in kept["val"]:
        union = np.zeros(store.mask(image_id).shape, dtype=bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            union |= coco.annToMask(ann).astype(bool)  # masks.crowd: include
            crowds += ann["iscrowd"]
        np.testing.assert_array_equal(store.mask(image_id), union)
    assert crowds > 0


def test_the_report_has_both_detectors_on_every_source_and_the_fine_tuned_row(study):
    project, _, _ = study
    report = project / "results" / "report"
    for task in ("yolov5n", "yolov8n"):
        with (report / f"accuracy_{task}.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert {r["codec"] for r in rows} == {"original", *TOY_CODECS}
        assert all(0 <= float(r["bbox_map"]) <= 1 for r in rows)
        tuned = [r for r in rows if r["model"] == "fine-tuned"]
        assert [r["codec"] for r in tuned] == (["object-2"] if task == "yolov5n" else [])
    bd = json.loads((report / "accuracy_bd_rate.json").read_text())
    pairs = {(b["task"], b["test"], b["anchor"]) for b in bd}
    for task in ("yolov5n", "yolov8n"):
        for anchor in ("jpeg", "bmshj2018-hyperprior-mse"):
            assert (task, "bmshj2018-hyperprior-object", anchor) in pairs
    rd = (report / "rd.md").read_text()
    assert all(name in rd for name in TOY_CODECS)
    with (project / "results" / "bitmaps" / "mse-2-vs-object-2" / "bits.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and float(rows[0]["object-2_object_bits"]) > 0
    upstream = run(["dvc", "dag", "--outs", "bitmaps@mse-2-vs-object-2"], project).stdout
    assert "data/masks/coco/object" in upstream
