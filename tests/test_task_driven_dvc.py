"""task-driven/params.yaml through `icmflow pipeline` + `dvc repro` at tiny size: task-loss and
auxiliary-loss codecs trained through the project's own YOLO, scored, mapped and reported."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml

from tests.helpers.dvc import copy_project, ran_stages, run
from tests.helpers.project import REPO

pytestmark = pytest.mark.slow
BRANCH = {"branch_widths": [16, 16, 16, 16, 32], "branch_groups": 8}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("task-driven"))
    params = yaml.safe_load((REPO / "task-driven" / "params.yaml").read_text())
    params["sample"].update(train_images=4, val_images=2)
    params["masks"].update(images_per_shard=2, n_workers=1)
    params["encode"].update(n_workers=1)
    params["train"].update(steps=2, batch_size=2)
    keep = {"task-2", "aux-2", "jpeg-q10"}  # aux-loss-image: tests/test_auxiliary.py
    params["codecs"] = {k: v for k, v in params["codecs"].items() if k in keep}
    for entry in params["codecs"].values():
        entry.get("model_args", {}).update(N=8, M=8)
        if entry.get("objective", "").startswith("aux-loss"):
            entry["objective_args"].update(BRANCH)
    params["tasks"]["yolo-shapes"].update(input_size=64)
    params["tasks"]["yolo-shapes"]["train"].update(epochs=1)
    params["bit_maps"]["images"] = 1
    project = root / "task-driven"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["icmflow", "--params", "task-driven/params.yaml", "pipeline"], root)
    ran = ran_stages(run(["dvc", "repro"], project, pythonpath=root).stdout)
    assert {"train@aux-2", "train@task-2", "bitmaps@task-2-vs-aux-2", "report"} <= ran
    return project


def test_task_driven_codecs_are_trained_through_the_task_model(project):
    for name, objective in (("task-2", "task-loss"), ("aux-2", "aux-loss")):
        record = torch.load(project / "models" / name / "checkpoint.pth.tar", weights_only=False)
        assert record["icmflow"]["objective"] == objective
        assert not any(k.startswith(("branch.", "head.")) for k in record["state_dict"])
        with (project / "models" / name / "train_log.csv").open() as handle:
            columns = next(csv.reader(handle))
        assert "task_loss" in columns and ("branch_loss" in columns) == (name == "aux-2")
    upstream = run(["dvc", "dag", "--outs", "train@aux-2"], project).stdout
    assert "models/tasks/yolo-shapes" in upstream


def test_the_report_has_their_accuracy_and_links_the_bit_maps(project):
    report = project / "results" / "report"
    accuracy = (report / "accuracy.csv").read_text()
    assert "aux-2" in accuracy and "task-2" in accuracy
    links = (report / "bit_allocation.md").read_text()
    assert "../bitmaps/task-2-vs-aux-2/index.md" in links
    maps = project / "results" / "bitmaps" / "task-2-vs-aux-2"
    assert {p.name for p in maps.iterdir()} >= {"task-2", "aux-2", "difference", "index.md"}
