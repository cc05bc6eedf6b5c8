import re
from pathlib import Path

import pytest
import yaml

from icmflow.pipeline.params import (
    ParamsError,
    check_initial_weights,
    check_registered,
    is_learned,
    load_params,
)
from tests.helpers.project import REPO


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def defaults() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_project_params_are_valid():
    params = load_params(REPO / "params.yaml")
    check_registered(params)
    check_initial_weights(params, params.learned_codecs, REPO)
    assert params.train.dataset in params.datasets
    families = {entry.family for entry in params.codecs.values()}
    assert {"learned", "jpeg", "webp"} <= families
    learned = {name: params.learned(name) for name in params.learned_codecs}
    # the demo compares the objectives on one architecture, every codec from one base
    assert len({entry.arch for entry in learned.values()}) == 1
    assert {entry.objective for entry in learned.values()} == {"mse", "object"}
    bases = {entry.init for entry in learned.values()} - {None}
    assert len(bases) == 1 and all(
        entry.init in bases or name in bases for name, entry in learned.items()
    )
    for anchor in params.report.anchors:
        assert len(params.series()[anchor]) >= 3  # enough points for a BD-rate


def test_entries_override_shared_training_settings(tmp_path, defaults):
    name = next(n for n, e in defaults["codecs"].items() if e["family"] == "learned")
    defaults["codecs"][name]["train"] = {"steps": 5, "lr": 1e-5}
    params = load_params(write(tmp_path, defaults))
    trained = params.training(name)
    assert (trained.steps, trained.lr) == (5, 1e-5)
    assert trained.batch_size == params.train.batch_size
    other = next(n for n in params.learned_codecs if n != name)
    assert params.training(other).steps == params.train.steps


def test_series_default_and_explicit(tmp_path, defaults):
    defaults["codecs"]["jpeg444-q50"] = {
        "family": "jpeg",
        "quality": 50,
        "subsampling": "4:4:4",
        "series": "jpeg-444",
    }
    params = load_params(write(tmp_path, defaults))
    series = params.series()
    assert series["jpeg-444"] == ["jpeg444-q50"] and "jpeg444-q50" not in series["jpeg"]
    default = next(n for n in params.learned_codecs if "series" not in defaults["codecs"][n])
    learned = params.learned(default)
    assert learned.series_name == f"{learned.arch}-{learned.objective}"
    assert (
        not is_learned(params.codec("jpeg444-q50"))
        and params.codec("jpeg444-q50").setting == "q=50"
    )


def test_misspelt_key_is_named(tmp_path, defaults):
    defaults["train"]["stpes"] = 10
    with pytest.raises(ParamsError, match=r"train\.stpes: unknown key"):
        load_params(write(tmp_path, defaults))


def test_misspelt_key_of_a_codec_entry_names_the_entry(tmp_path, defaults):
    defaults["codecs"]["jpeg-q10"]["qualty"] = 20
    with pytest.raises(ParamsError, match=r"codecs\.jpeg-q10\.qualty: unknown key"):
        load_params(write(tmp_path, defaults))


def test_every_problem_is_reported_at_once_naming_keys_not_the_file(tmp_path, defaults):
    defaults["train"]["steps"] = -1
    defaults["codecs"]["webp-q20"]["quality"] = 300
    defaults["codecs"]["bad"] = {"family": "png", "quality": 3}
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert "train.steps" in message and "-1" in message
    assert "codecs.webp-q20.quality" in message and "300" in message
    assert "codecs.bad" in message and "'png'" in message
    assert "datasets" not in message and len(message) < 1500  # keys, never a whole section


def test_registered_names_are_checked_with_the_registries(tmp_path, defaults):
    bases = {e.get("init") for e in defaults["codecs"].values()}  # others start from those
    entry = next(
        e for n, e in defaults["codecs"].items() if e["family"] == "learned" and n not in bases
    )
    entry.pop("init", None)  # an architecture of its own: random initial weights
    entry.update(arch="no-such-arch", objective="texture")
    params = load_params(write(tmp_path, defaults))  # the fast checks pass
    with pytest.raises(ParamsError) as err:
        check_registered(params)
    message = str(err.value)
    assert "unknown architecture 'no-such-arch'; registered: " in message
    assert "bmshj2018-hyperprior" in message and "unknown objective 'texture'" in message


def test_model_and_objective_arguments_are_checked(tmp_path, defaults):
    name = next(n for n, e in defaults["codecs"].items() if e["family"] == "learned")
    defaults["codecs"][name]["model_args"] = {"N": 8, "M": 8, "channels": 3}
    defaults["codecs"][name]["objective_args"] = {"alpha": 1}
    with pytest.raises(ParamsError) as err:
        check_registered(load_params(write(tmp_path, defaults)))
    message = str(err.value)
    assert f"codecs.{name}.model_args" in message and "channels" in message
    assert f"codecs.{name}.objective_args" in message and "alpha" in message


def test_codec_names_cannot_hold_dots(tmp_path, defaults):
    defaults["codecs"]["object-0.05"] = defaults["codecs"].pop("jpeg-q10")
    with pytest.raises(ParamsError, match=r"codecs\.object-0\.05"):
        load_params(write(tmp_path, defaults))


def test_cross_references_are_checked(tmp_path, defaults):
    defaults["encode"]["dataset"] = "coco"
    defaults["report"]["anchors"] = ["jpeg", "vvc"]
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert "encode.dataset: 'coco' is not under datasets" in message
    assert "report.anchors: 'vvc' is no codec series" in message


def test_unknown_codec_lookup():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ParamsError, match=f"not in {re.escape(str(REPO / 'params.yaml'))} codecs"):
        params.codec("object-123")
    with pytest.raises(ParamsError, match="is a jpeg codec: it is not trained"):
        params.learned("jpeg-q10")


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_sam_is_off_by_default(defaults):
    params = load_params(REPO / "params.yaml")
    assert params.edges.datasets == [] and params.masks.source == "annotations"
    assert params.sam.checkpoint is None


def edge_codec() -> dict:
    return {
        "family": "learned",
        "arch": "bmshj2018-hyperprior",
        "model_args": {"N": 8, "M": 8},
        "objective": "edge",
        "lmbda": 0.01,
    }


def test_edge_codec_needs_edges_of_the_training_dataset(tmp_path, defaults):
    defaults["codecs"]["edge-1"] = edge_codec()
    params = load_params(write(tmp_path, defaults))
    with pytest.raises(ParamsError, match=r"edges\.datasets does not list it: add it") as err:
        check_registered(params)
    assert "codecs.edge-1.objective" in str(err.value)
    assert "edges: {datasets: [sample]}" in str(err.value)
    defaults["edges"]["datasets"] = ["sample"]
    defaults["sam"]["checkpoint"] = "models/sam/sam_vit_b_01ec64.pth"
    check_registered(load_params(write(tmp_path, defaults)))


@pytest.mark.parametrize(
    ("section", "values", "user"),
    [
        ("edges", {"datasets": ["sample"]}, "edges.datasets ['sample']"),
        ("masks", {"source": "sam-boxes"}, "masks.source sam-boxes"),
    ],
)
def test_sam_users_need_a_checkpoint(tmp_path, defaults, section, values, user):
    defaults[section].update(values)
    defaults["sam"]["model_type"] = "vit_l"
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert f"{user} need Segment Anything, but sam.checkpoint is not set" in message
    assert "sam_vit_l_0b3195.pth" in message and "segment-anything#model-checkpoints" in message


def test_edges_of_unknown_datasets_and_bad_sam_settings(tmp_path, defaults):
    defaults["edges"]["datasets"] = ["coco"]
    defaults["sam"].update(checkpoint="sam.pth", model_type="vit_x", precision="half")
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert "sam.model_type" in message and "sam.precision" in message
    defaults["sam"].update(model_type="vit_b", precision="bfloat16")
    with pytest.raises(ParamsError, match=r"edges\.datasets: lists \['coco'\], not under datasets"):
        load_params(write(tmp_path, defaults))


def test_training_crops_are_a_multiple_of_the_models_downsampling(tmp_path, defaults):
    defaults["train"]["patch_size"] = 96
    with pytest.raises(ParamsError, match=r"train\.patch_size: Input should be a multiple of 64"):
        load_params(write(tmp_path, defaults))


def test_task_entries_are_checked_naming_keys(tmp_path, defaults):
    task = defaults["tasks"]["yolo-shapes"]
    task["weights"] = "models/yolo.pt"  # and `train`: one of the two
    task["finetune"]["codecs"] = ["jpeg-q25", "vvc-1"]
    defaults["encode"]["train_split"] = None
    defaults["codecs"]["original"] = {"family": "jpeg", "quality": 5}
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert "tasks.yolo-shapes" in message and "exactly one of `weights`" in message
    del task["weights"]
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert "tasks.yolo-shapes.finetune.codecs: ['vvc-1'] are not under codecs" in message
    assert "encode.train_split" in message and "codecs.original: is reserved" in message


def test_task_backends_and_kinds_are_checked_with_the_registry(tmp_path, defaults):
    defaults["tasks"]["yolo-shapes"]["backend"] = "detectron2"
    defaults["tasks"]["other"] = {**defaults["tasks"]["yolo-shapes"], "backend": "ultralytics"}
    defaults["tasks"]["other"]["kind"] = "semantic_segmentation"
    with pytest.raises(ParamsError) as err:
        check_registered(load_params(write(tmp_path, defaults)))
    message = str(err.value)
    assert "tasks.yolo-shapes.backend: unknown task backend 'detectron2'" in message
    assert "torchvision" in message and "ultralytics" in message
    assert "tasks.other.kind: backend ultralytics has no semantic_segmentation models" in message


def test_the_poly_schedule_takes_no_milestones(tmp_path, defaults):
    defaults["train"]["lr_milestones"] = [500]
    name = next(n for n, e in defaults["codecs"].items() if e["family"] == "learned")
    defaults["codecs"][name]["train"] = {"lr_schedule": "poly"}
    with pytest.raises(
        ParamsError,
        match=rf"codecs\.{name}\.train: lr_milestones \[500\] are for lr_schedule multistep",
    ):
        load_params(write(tmp_path, defaults))
    defaults["codecs"][name]["train"]["lr_milestones"] = []
    trained = load_params(write(tmp_path, defaults)).training(name)
    assert (trained.lr_schedule, trained.lr_poly_start, trained.lr_poly_power) == ("poly", 0.5, 0.9)
    defaults["train"]["lr_schedule"] = "poly"
    with pytest.raises(ParamsError, match=r"\n  train: lr_milestones \[500\] are for lr_schedule"):
        load_params(write(tmp_path, defaults))
    defaults["train"].update(lr_milestones=[], lr_poly_start=1.0)
    with pytest.raises(ParamsError, match=r"train\.lr_poly_start: Input should be less than 1"):
        load_params(write(tmp_path, defaults))


def test_the_poly_schedule_leaves_the_default_milestones_aside(tmp_path, defaults):
    """The default lr_milestones are multistep's: `lr_schedule: poly` alone needs no `[]`."""
    defaults["train"].pop("lr_milestones", None)
    defaults["train"]["lr_schedule"] = "poly"
    for entry in defaults["codecs"].values():  # milestones written for a codec stay an error
        entry.get("train", {}).pop("lr_milestones", None)
    params = load_params(write(tmp_path, defaults))
    assert params.train.lr_schedule == "poly" and params.train.lr_milestones


def test_edges_alpha_is_sa_icms_confidence_and_the_old_key_says_so(tmp_path, defaults):
    params = load_params(REPO / "params.yaml")
    assert params.edges.method == "canny" and params.edges.alpha == 0.88
    defaults["edges"].pop("alpha")
    defaults["edges"]["pred_iou_thresh"] = 0.9
    with pytest.raises(ParamsError, match="pred_iou_thresh is now alpha"):
        load_params(write(tmp_path, defaults))
    defaults["edges"].pop("pred_iou_thresh")
    defaults["edges"]["method"] = "sobel"
    with pytest.raises(ParamsError, match=r"edges\.method"):
        load_params(write(tmp_path, defaults))


def test_roi_entries_wrap_a_learned_codec(tmp_path, defaults):
    learned = next(n for n, e in defaults["codecs"].items() if e["family"] == "learned")
    defaults["codecs"]["roi-1"] = {"family": "roi", "codec": learned}
    params = load_params(write(tmp_path, defaults))
    entry = params.codec("roi-1")
    assert entry.qf == 1.4 and entry.series_name == "roi-qf1.4"  # the paper's QF
    assert "roi-1" not in params.trained_codecs  # it reuses its codec's checkpoint
    jpeg = next(n for n, e in defaults["codecs"].items() if e["family"] == "jpeg")
    for codec, found in ((jpeg, "a jpeg codec"), ("nope", "not under codecs")):
        defaults["codecs"]["roi-1"] = {"family": "roi", "codec": codec}
        with pytest.raises(ParamsError, match=rf"codecs\.roi-1\.codec: '{codec}' is {found}"):
            load_params(write(tmp_path, defaults))
    defaults["codecs"]["roi-1"] = {"family": "roi", "codec": learned, "qf": 0.5}
    with pytest.raises(ParamsError, match=r"codecs\.roi-1\.qf: Input should be greater"):
        load_params(write(tmp_path, defaults))


def test_a_key_given_twice_is_named_with_both_lines(tmp_path):
    lines = (REPO / "params.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("train:")) + 1
    lines.insert(at, "  steps: 5")  # an earlier `steps` than the file's own
    first = at + 1
    second = next(i for i, line in enumerate(lines) if line.startswith("  steps:") and i > at) + 1
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert f"train.steps: given twice (lines {first} and {second})" in str(err.value)


def test_merged_keys_may_be_overridden(tmp_path, defaults):
    """A `<<` merge then a key of the same name is YAML's override, not a key given twice."""
    path = tmp_path / "params.yaml"
    defaults.pop("sample", None)
    path.write_text(
        "x-shared: &n {train_images: 4}\n"
        + yaml.safe_dump(defaults)
        + "sample:\n  <<: *n\n  train_images: 6\n"
    )
    with pytest.raises(ParamsError) as err:  # only x-shared, no section, is refused
        load_params(path)
    assert "x-shared: unknown key" in str(err.value) and "twice" not in str(err.value)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("key", ["lmbda", "train.lr", "codec train.lr"])
def test_infinite_or_nan_rates_and_lambdas_are_refused(tmp_path, defaults, key, value):
    name = next(n for n, e in defaults["codecs"].items() if e["family"] == "learned")
    if key == "lmbda":
        defaults["codecs"][name]["lmbda"], named = value, f"codecs.{name}.lmbda"
    elif key == "train.lr":
        defaults["train"]["lr"], named = value, "train.lr"
    else:
        defaults["codecs"][name]["train"], named = {"lr": value}, f"codecs.{name}.train.lr"
    with pytest.raises(ParamsError, match=f"{re.escape(named)}: Input should be a finite number"):
        load_params(write(tmp_path, defaults))


@pytest.mark.parametrize(
    ("model_args", "problem"),
    [
        ({"N": 0, "M": 8}, "N must be a positive integer (got 0)"),
        ({"N": -8, "M": 8}, "N must be a positive integer (got -8)"),
        ({"N": 8, "M": 8.5}, "M must be a positive integer (got 8.5)"),
        ({"N": "8", "M": 8}, "N must be a positive integer (got '8')"),
        ({"N": True, "M": 8}, "N must be a positive integer (got True)"),
    ],
)
def test_model_sizes_must_be_positive_integers(tmp_path, defaults, model_args, problem):
    name = next(n for n, e in defaults["codecs"].items() if e["family"] == "learned")
    defaults["codecs"][name]["model_args"] = model_args
    with pytest.raises(ParamsError) as err:
        check_registered(load_params(write(tmp_path, defaults)))
    assert f"codecs.{name}.model_args: " in str(err.value) and problem in str(err.value)


def test_tcm_block_and_head_lists_are_sizes_too(tmp_path, defaults):
    defaults["codecs"]["tcm-1"] = {
        "family": "learned",
        "arch": "tcm",
        "model_args": {"config": [1, 1, 0, 1, 1, 1], "head_dim": 8, "drop_path_rate": 0.1},
        "objective": "mse",
        "lmbda": 0.01,
    }
    with pytest.raises(ParamsError) as err:
        check_registered(load_params(write(tmp_path, defaults)))
    message = str(err.value)
    assert "config must be a list of positive integers (got [1, 1, 0, 1, 1, 1])" in message
    assert "head_dim must be a list of positive integers (got 8)" in message
    assert "drop_path_rate" not in message
