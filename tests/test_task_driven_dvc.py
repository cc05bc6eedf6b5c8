"""task-driven/params.yaml through `icmflow pipeline` + `dvc repro` at tiny size: task-loss and
auxiliary-loss codecs trained through the project's own YOLO, a compressed-domain codec with a
branch for the project's own DeepLabV3 and a secondary task of it (foreground extraction, eq. 6),
scored (the latter two from their machine bitstreams; foreground by MAE), mapped and
reported."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from icmflow.coding.bitstream import unpack
from icmflow.coding.machine import machine_files
from icmflow.datasets.prepared import PreparedDataset
from icmflow.pipeline.params import load_params
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.tasks import machine_codec
from icmflow.tasks.predictions import quantised_foreground, read_label_png
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
    keep = {"task-2", "aux-2", "cd-2", "cd-2-fg"}  # aux-loss-image: tests/test_auxiliary.py
    params["codecs"] = {k: v for k, v in params["codecs"].items() if k in keep}
    params["report"]["anchors"] = ["bmshj2018-hyperprior-task-loss"]
    for entry in params["codecs"].values():
        entry.get("model_args", {}).update(N=8, M=8)
        if entry.get("objective", "").startswith("aux-loss"):
            entry["objective_args"].update(BRANCH)
    for name in ("cd-2", "cd-2-fg"):
        params["codecs"][name]["train"].update(patch_size=64)
    for task in params["tasks"].values():
        task.update(input_size=64)
        task["train"].update(epochs=1)
    params["bit_maps"]["images"] = 1
    project = root / "task-driven"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["icmflow", "--params", "task-driven/params.yaml", "pipeline"], root)
    ran = ran_stages(run(["dvc", "repro"], project, pythonpath=root).stdout)
    assert {"train@aux-2", "train@task-2", "train@cd-2", "train@cd-2-fg", "report"} <= ran
    assert {"bitmaps@task-2-vs-aux-2", "infer@cd-2-fg-fg-shapes"} <= ran
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


def test_the_compressed_domain_codec_is_scored_from_its_machine_bitstreams(project):
    record = torch.load(project / "models" / "cd-2" / "checkpoint.pth.tar", weights_only=False)
    assert record["icmflow"]["objective"] == "compressed-domain"
    branch = record["icmflow"]["task_branch"]
    assert any(k.startswith("gate.") for k in branch) and any(k.startswith("tail.") for k in branch)
    files = machine_files(project / "data" / "coded" / "cd-2", "val")
    assert len(files) == 2 and all(f.path.stat().st_size == f.bytes for f in files)
    bits, pixels = 8 * sum(f.bytes for f in files), sum(f.pixels for f in files)
    accuracy = json.loads(
        (project / "results" / "tasks" / "cd-2-deeplab-shapes" / "accuracy.json").read_text()
    )
    assert accuracy["bpp"] == pytest.approx(bits / pixels) and accuracy["miou"] is not None
    with (project / "results" / "report" / "accuracy_deeplab-shapes.csv").open() as handle:
        rows = {row["codec"]: row for row in csv.DictReader(handle)}
    assert float(rows["cd-2"]["bpp"]) == pytest.approx(bits / pixels)
    assert rows["cd-2"]["setting"].endswith("machine")
    # the predictions scored are what the machine bitstream decodes to, with no image
    params, paths = load_params(project / "params.yaml"), Paths(project)
    codec = machine_codec(params, paths, "cd-2")
    image = next(i for i in PreparedDataset.load(paths.prepared_split("sample", "val")).images)
    first = next(f for f in files if f.image_id == image["id"])
    predicted = codec.decode(first.path.read_bytes())
    assert predicted.shape == (image["height"], image["width"])
    out = project / "results" / "tasks" / "cd-2-deeplab-shapes" / "labels"
    # model classes 1-3 are categories 1-3 (matched by name), 0 background in both
    np.testing.assert_array_equal(read_label_png(out, image["file_name"]), predicted)
    upstream = run(["dvc", "dag", "--outs", "infer@cd-2-deeplab-shapes"], project).stdout
    assert "models/cd-2/checkpoint.pth.tar" in upstream


def test_the_secondary_task_trains_its_branch_on_the_frozen_primary(project):
    primary, secondary = (
        torch.load(project / "models" / name / "checkpoint.pth.tar", weights_only=False)
        for name in ("cd-2", "cd-2-fg")
    )
    assert secondary["icmflow"]["objective"] == "compressed-domain-secondary"
    assert secondary["icmflow"]["primary"]["codec"] == "cd-2"
    assert primary["state_dict"].keys() == secondary["state_dict"].keys()
    assert all(torch.equal(v, secondary["state_dict"][k]) for k, v in primary["state_dict"].items())
    branch = secondary["icmflow"]["task_branch"]
    assert branch["tail.head.4.weight"].shape[0] == 1  # the foreground tail: one sigmoid output
    with (project / "models" / "cd-2-fg" / "train_log.csv").open() as handle:
        columns = next(csv.reader(handle))
    assert {"task", "kd", "machine_bpp"} <= set(columns) and "mse" not in columns
    upstream = run(["dvc", "dag", "--outs", "train@cd-2-fg"], project).stdout
    assert "models/cd-2/checkpoint.pth.tar" in upstream
    assert "models/tasks/fg-shapes" in upstream


def test_its_human_images_are_the_primary_s_and_its_machine_bitstream_shares_z(project):
    coded = project / "data" / "coded"
    ours = sorted((coded / "cd-2-fg" / "bitstreams" / "val").iterdir())
    theirs = sorted((coded / "cd-2" / "bitstreams" / "val").iterdir())
    assert len(ours) == 2 and [p.read_bytes() for p in ours] == [p.read_bytes() for p in theirs]
    for mine, primary in zip(
        machine_files(coded / "cd-2-fg", "val"), machine_files(coded / "cd-2", "val"), strict=True
    ):
        assert mine.image_id == primary.image_id
        z = [unpack(f.path.read_bytes()).strings[0] for f in (mine, primary)]
        assert z[0] == z[1]  # the same ẑ; the channels are each task's gate's


def test_the_foreground_task_is_scored_by_mae_from_the_secondary_bitstreams(project):
    files = machine_files(project / "data" / "coded" / "cd-2-fg", "val")
    bits, pixels = 8 * sum(f.bytes for f in files), sum(f.pixels for f in files)
    results = project / "results" / "tasks"
    accuracy = json.loads((results / "cd-2-fg-fg-shapes" / "accuracy.json").read_text())
    assert accuracy["bpp"] == pytest.approx(bits / pixels) and 0 <= accuracy["mae"] <= 1
    original = json.loads((results / "original-fg-shapes" / "accuracy.json").read_text())
    assert 0 <= original["mae"] <= 1 and "bpp" not in original
    params, paths = load_params(project / "params.yaml"), Paths(project)
    codec = machine_codec(params, paths, "cd-2-fg")
    image = PreparedDataset.load(paths.prepared_split("sample", "val")).images[0]
    found = next(f for f in files if f.image_id == image["id"])
    predicted = codec.decode(found.path.read_bytes())
    assert predicted.shape == (image["height"], image["width"])
    written = read_label_png(results / "cd-2-fg-fg-shapes" / "foreground", image["file_name"])
    np.testing.assert_array_equal(written, quantised_foreground(predicted))
    report = project / "results" / "report"
    with (report / "accuracy_fg-shapes.csv").open() as handle:
        rows = {row["codec"]: row for row in csv.DictReader(handle)}
    assert rows["cd-2-fg"]["setting"] == "primary cd-2 machine"
    assert rows["cd-2-fg"]["series"] == "secondary-fg-shapes"
    assert float(rows["cd-2-fg"]["mae"]) == pytest.approx(accuracy["mae"])
    assert (report / "accuracy_fg-shapes_mae.png").is_file()
    bd = json.loads((report / "accuracy_bd_rate.json").read_text())
    assert any(b["task"] == "fg-shapes" and b["quality"] == "mae" for b in bd)
