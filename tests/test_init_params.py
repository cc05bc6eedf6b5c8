"""`icmflow init` (a minimal params.yaml for one's own data) and `icmflow params --resolved`
(every default filled in), and the real-data training defaults they show."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from icmflow.pipeline.cli import app
from icmflow.pipeline.params import TrainParams, load_params
from icmflow.pipeline.params.resolved import resolved
from icmflow.pipeline.paths import Paths
from tests.helpers.layouts import write_photos
from tests.helpers.project import REPO

runner = CliRunner()
PROJECTS = (
    REPO / "params.yaml",
    REPO / "papers" / "params.yaml",
    REPO / "task-driven" / "params.yaml",
)


def init(*args: str) -> str:
    result = runner.invoke(app, ["init", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("folders", "splits", "train", "evaluated"),
    [
        (["a.png", "deeper/b.png"], {"all": "."}, "all", "all"),
        (
            ["train/a.png", "val/b.png", "notes/c.png"],
            {"train": "train", "val": "val"},
            "train",
            "val",
        ),
    ],
)
def test_init_writes_a_minimal_project_with_the_defaults_written_out(
    tmp_path, monkeypatch, folders, splits, train, evaluated
):
    write_photos(tmp_path / "my photos", dict.fromkeys(folders, (32, 32)))
    monkeypatch.chdir(tmp_path)
    init("--root", "my photos")
    text = (tmp_path / "params.yaml").read_text()
    params = load_params("params.yaml")
    assert list(params.datasets) == ["my-photos"]
    dataset = params.datasets["my-photos"]
    assert dataset.format == "images" and dataset.root == "my photos"
    assert {name: split.images for name, split in dataset.splits.items()} == splits
    assert params.train == TrainParams(dataset="my-photos", split=train)
    assert (params.encode.dataset, params.encode.split) == ("my-photos", evaluated)
    for field in TrainParams.model_fields:  # shown, not hidden
        assert f"\n  {field}: " in text
    assert not params.tasks and params.report.anchors == ["jpeg"]
    assert [n for n in params.codecs if params.codecs[n].family == "learned"] == ["mse-1"]
    assert ("evaluated on the images they trained on" in text) == (train == evaluated)


def test_init_never_overwrites_without_force(tmp_path, monkeypatch):
    write_photos(tmp_path / "p", {"a.png": (16, 16)})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("mine")
    result = runner.invoke(app, ["init", "--root", "p"])
    assert result.exit_code == 1 and "exists; pass --force" in result.output
    assert (tmp_path / "params.yaml").read_text() == "mine"
    init("--root", "p", "--force", "--name", "holiday")
    assert list(load_params("params.yaml").datasets) == ["holiday"]
    result = runner.invoke(app, ["init", "--root", "p", "--force", "--format", "pascal"])
    assert result.exit_code == 1 and "unknown dataset format 'pascal'" in result.output


@pytest.mark.parametrize("format", ["coco", "yolo", "visdrone", "cityscapes"])
def test_init_finds_the_splits_of_each_layout_and_prepare_reads_them(
    sample_layouts, tmp_path, monkeypatch, format
):
    monkeypatch.chdir(tmp_path)
    init("--format", format, "--root", str(sample_layouts / format), "--name", "mine")
    params = load_params("params.yaml")
    assert set(params.datasets["mine"].splits) == {"train", "val"}
    assert (params.train.split, params.encode.split) == ("train", "val")
    result = runner.invoke(app, ["prepare", "mine"])
    assert result.exit_code == 0, result.output
    assert Paths().prepared_split("mine", "val").is_file()


@pytest.mark.parametrize("path", PROJECTS, ids=lambda p: p.parent.name)
def test_resolved_params_fill_in_every_default_and_train_the_same(tmp_path, path):
    result = runner.invoke(app, ["--params", str(path), "params", "--resolved"])
    assert result.exit_code == 0, result.output
    full = yaml.safe_load(result.output)
    params = load_params(path)
    for name in params.trained_codecs:
        assert set(full["codecs"][name]["train"]) == set(TrainParams.model_fields)
    assert set(full["train"]) == set(TrainParams.model_fields)
    assert full["masks"]["images_per_shard"] == params.masks.images_per_shard
    copy = tmp_path / "resolved.yaml"
    copy.write_text(result.output)
    again = load_params(copy)
    assert resolved(again) == full
    assert all(again.training(n) == params.training(n) for n in params.trained_codecs)


def test_params_checks_and_names_the_key(tmp_path):
    result = runner.invoke(app, ["--params", str(REPO / "params.yaml"), "params"])
    assert result.exit_code == 0 and "is valid" in result.output
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["codecs"]["jpeg-q5"]["quality"] = 500
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["--params", str(tmp_path / "params.yaml"), "params"])
    assert result.exit_code == 1 and "codecs.jpeg-q5.quality" in result.output


@pytest.mark.parametrize("path", PROJECTS, ids=lambda p: p.parent.name)
def test_the_demo_projects_write_out_what_real_data_defaults_would_change(path):
    """Defaults are a real-data recipe; the smoke-scale projects set their own values."""
    written = yaml.safe_load(path.read_text())["train"]
    recipe = {"patch_size", "batch_size", "steps", "lr", "lr_milestones", "channels_last"}
    assert recipe <= set(written), recipe - set(written)


def test_training_defaults_are_the_real_data_recipe():
    defaults = TrainParams()
    assert (defaults.lr, defaults.aux_lr, defaults.clip_max_norm) == (1e-4, 1e-3, 1.0)
    assert (defaults.batch_size, defaults.patch_size) == (16, 256)
    assert defaults.lr_milestones == [round(0.9 * defaults.steps)] and defaults.channels_last


@pytest.mark.parametrize("command", ["decode", "show", "init", "params"])
def test_the_commands_for_ones_own_data_have_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    assert command in runner.invoke(app, ["--help"]).output
