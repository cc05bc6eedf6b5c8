"""Paper 004's other tasks: secondary tasks on a frozen primary codec (eq. 6), and foreground
extraction (DeepLabV3 with a sigmoid, Dice loss, MAE), in the library and as params entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from icmflow.codecs.architectures import create_model
from icmflow.codecs.checkpoint import load_codec, save_checkpoint
from icmflow.codecs.compressed_domain import FrozenCodec
from icmflow.coding.machine import load_machine_codec
from icmflow.evaluation.bdrate import bd_rate
from icmflow.pipeline.params import ParamsError, check_registered, load_params
from icmflow.tasks.accuracy import score_predictions
from icmflow.tasks.classes import foreground_mapping
from icmflow.tasks.predictions import read_foreground_png
from icmflow.tasks.scoring import foreground_ground_truth, score_foreground
from icmflow.training.data import TrainingCrops
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.targets import GroundTruth
from icmflow.training.trainer import TrainSettings, train_codec
from icmflow.vision.tasks.base import TaskModelSpec, TrainingData
from icmflow.vision.tasks.base import TrainSettings as TaskTrainSettings
from icmflow.vision.tasks.differentiable import load_task_loss
from icmflow.vision.tasks.torchvision_backend import TorchvisionBackend, dice_loss, load_model
from tests.helpers.builders import random_task_weights, save_trained
from tests.helpers.codecs import textured_image
from tests.helpers.project import REPO

SETTINGS = TrainSettings(steps=2, batch_size=2, lr=1e-3, aux_lr=1e-3)
N, M = 16, 24


def spec(kind: str, tmp_path, arch: str = "deeplabv3_resnet18", **options) -> TaskModelSpec:
    return random_task_weights(
        TaskModelSpec(
            kind=kind,
            weights=tmp_path / f"{kind}.pt",
            input_size=64,
            options={"arch": arch, **options},
        )
    )


# --- Dice, MAE and a lower-is-better BD-rate, by hand ----------------------------------------


def test_the_dice_loss_is_its_equation():
    p = torch.tensor([[[0.5, 1.0], [0.0, 0.25]], [[0.0, 0.0], [0.0, 0.0]]])
    g = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    # image 1: Σpg = 1.5, Σp = 1.75, Σg = 2: 1 − (3 + 1) / (3.75 + 1); image 2: empty, 1 − 1/1
    expected = ((1 - 4 / 4.75) + 0.0) / 2
    assert dice_loss(p, g).item() == pytest.approx(expected)
    assert dice_loss(g.float(), g).item() == pytest.approx(0.0)


def test_mae_is_per_image_then_averaged():
    truth = [np.array([[1, 0], [0, 0]]), np.ones((1, 3), dtype=np.int64)]
    predicted = [np.array([[0.5, 0.5], [0.0, 1.0]]), np.array([[1.0, 0.7, 0.4]])]
    # image 1: (0.5 + 0.5 + 0 + 1) / 4 = 0.5; image 2: (0 + 0.3 + 0.6) / 3 = 0.3
    assert score_foreground(truth, predicted) == {"mae": pytest.approx(0.4), "images": 2}
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        score_foreground([truth[0]], [predicted[0] * 2])


def test_a_lower_is_better_metric_gets_the_bd_rate_of_its_complement():
    rates = [0.1, 0.2, 0.4, 0.8]
    anchor_mae, test_mae = [0.30, 0.22, 0.16, 0.12], [0.26, 0.19, 0.14, 0.11]
    as_mae = bd_rate(rates, anchor_mae, rates, test_mae, lower_is_better=True)
    complement = bd_rate(rates, [1 - q for q in anchor_mae], rates, [1 - q for q in test_mae])
    assert as_mae.percent is not None and as_mae.percent < 0  # the test needs fewer bits
    assert as_mae.percent == pytest.approx(complement.percent, rel=1e-9)
    # read as higher-is-better, all but the cheapest point of each curve are dominated
    assert bd_rate(rates, anchor_mae, rates, test_mae).percent is None


# --- foreground extraction as a task model ----------------------------------------------------


def test_a_foreground_model_trains_predicts_and_is_scored_by_mae(sample_prepared, tmp_path):
    val = sample_prepared["val"]
    weights = TorchvisionBackend().train(
        TaskModelSpec(
            "foreground", tmp_path / "none.pt", 64, options={"arch": "deeplabv3_resnet18"}
        ),
        TrainingData(sample_prepared["train"].path),
        TaskTrainSettings(epochs=1, batch_size=4),
        tmp_path / "trained",
    )
    found = TaskModelSpec("foreground", weights, 64, options={"arch": "deeplabv3_resnet18"})
    model = TorchvisionBackend().load(found)
    images = val.images[:2]
    predicted = model.predict(_pixels(val, images))
    predictions = {i["id"]: p for i, p in zip(images, predicted, strict=True)}
    for image in images:
        p = predictions[image["id"]]
        assert p.shape == (image["height"], image["width"]) and p.dtype == np.float32
        assert p.min() >= 0 and p.max() <= 1
    subset = _subset(val, images)
    mapping = foreground_mapping(val.data["categories"])
    accuracy = score_predictions("foreground", subset, predictions, mapping, tmp_path / "out")
    # the score is the MAE of what was written, recomputed here from the PNGs
    errors = [
        np.abs(
            read_foreground_png(tmp_path / "out" / "foreground", i["file_name"])
            - foreground_ground_truth(subset, i)
        ).mean()
        for i in images
    ]
    assert accuracy["mae"] == pytest.approx(np.mean(errors)) and accuracy["images"] == 2
    truth = foreground_ground_truth(subset, images[0])
    assert truth.any() and set(np.unique(truth).tolist()) <= {0, 1}


def _pixels(dataset, images):
    from icmflow.datasets.images import read_rgb

    return [read_rgb(dataset.image_path(i)) for i in images]


def _subset(dataset, images):
    from icmflow.datasets.prepared import PreparedDataset

    ids = {i["id"] for i in images}
    annotations = [a for a in dataset.data["annotations"] if a["image_id"] in ids]
    return PreparedDataset(
        dataset.path, {**dataset.data, "images": images, "annotations": annotations}
    )


def test_a_foreground_model_refuses_more_than_one_output(tmp_path):
    from icmflow.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="one output"):
        spec("foreground", tmp_path, num_classes=4)
    with pytest.raises(CheckpointError, match="is a detection model, not foreground"):
        spec("foreground", tmp_path, arch="fasterrcnn_resnet18_fpn")


# --- a foreground compressed-domain codec and a secondary task --------------------------------


@pytest.fixture(scope="module")
def primary(sample_prepared, tmp_path_factory):
    """A compressed-domain codec trained two steps for foreground extraction (ground truth)."""
    tmp_path = tmp_path_factory.mktemp("primary")
    task_spec = spec("foreground", tmp_path)
    task = load_task_loss("torchvision", task_spec)
    model = create_model("bmshj2018-hyperprior", seed=0, N=N, M=M)
    objective = OBJECTIVES["compressed-domain"](lmbda=0.01, task=task, machine_rate_weight=0.1)
    assert objective.ground_truth == "foreground"
    objective.bind(model)
    crops = TrainingCrops(sample_prepared["train"], {}, 64, targets=GroundTruth("foreground", {}))
    result = train_codec(model, objective, crops, SETTINGS, log_path=tmp_path / "log.csv")
    assert all(np.isfinite(v) for v in result.last.values())
    path = save_trained(
        result,
        tmp_path / "checkpoint.pth.tar",
        {"N": N, "M": M},
        step=2,
        extra={"lambda": 0.01, **objective.checkpoint_extra()},
    )
    return path, task_spec


def test_a_foreground_branch_predicts_probabilities_from_its_machine_bitstream(primary):
    path, task_spec = primary
    codec = load_machine_codec(
        path, load_model(task_spec, task_spec.weights), "fg", foreground=True
    )
    coded = codec.encode(textured_image(70, 90, seed=3))
    predicted = codec.decode(coded.data)
    assert predicted.shape == (70, 90) and predicted.dtype == np.float32
    assert predicted.min() >= 0 and predicted.max() <= 1
    assert np.array_equal(predicted, codec.decode(coded.data))


def _codec_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _secondary(primary_path, kind, tmp_path, sample_prepared, **arguments):
    """The secondary task `kind` trained two steps on the frozen primary; the trained frozen
    codec, the objective and the result."""
    task_spec = spec(kind, tmp_path, **({"num_classes": 4} if kind != "foreground" else {}))
    task = load_task_loss("torchvision", task_spec)
    model = FrozenCodec(load_codec(primary_path))
    objective = OBJECTIVES["compressed-domain-secondary"](
        lmbda=0.01, task=task, machine_rate_weight=0.1, **arguments
    )
    objective.bind(model)
    truth = GroundTruth(objective.ground_truth, {1: 1, 2: 2, 3: 3})
    crops = TrainingCrops(sample_prepared["train"], {}, 64, targets=truth)
    before = _codec_state(objective.branch)
    result = train_codec(model, objective, crops, SETTINGS, log_path=tmp_path / "log.csv")
    moved = [k for k, v in objective.branch.state_dict().items() if not torch.equal(before[k], v)]
    return model, objective, result, task_spec, moved


def test_a_secondary_task_trains_its_branch_alone_on_the_frozen_primary(
    primary, sample_prepared, tmp_path
):
    """Eq. 6: the codec's state (encoder, hyperprior, entropy models and their tables) and its
    bitstreams are bit-identical after training the secondary task; its branch moved."""
    path, _ = primary
    reference = load_codec(path)
    x = torch.from_numpy(textured_image(64, 64, seed=5)).permute(2, 0, 1)[None].float() / 255
    strings = reference.compress(x)["strings"]
    model, objective, result, task_spec, moved = _secondary(
        path, "semantic_segmentation", tmp_path, sample_prepared
    )
    assert {"task", "kd", "machine_bpp", "kept_fraction"} <= set(result.last)
    assert "bpp" not in result.last and "mse" not in result.last  # no term of the codec's
    trained = model.codec.cpu().state_dict()
    assert trained.keys() == reference.state_dict().keys()
    assert all(torch.equal(v, trained[k]) for k, v in reference.state_dict().items())
    assert all(not p.requires_grad for p in model.parameters())
    assert not result.aux_optimizer.param_groups[0]["params"]  # not even the quantiles
    assert model.codec.compress(x)["strings"] == strings
    assert any(k.startswith("gate.") for k in moved) and any(k.startswith("tail.") for k in moved)
    # saved as the train stage does: the codec as trained through, and the branch
    saved = tmp_path / "secondary.pth.tar"
    save_checkpoint(
        saved,
        model.codec,
        arch="bmshj2018-hyperprior",
        model_args={"N": N, "M": M},
        step=2,
        loss=result.last["loss"],
        optimizer=result.optimizer,
        aux_optimizer=result.aux_optimizer,
        extra=objective.checkpoint_extra(),
    )
    assert load_codec(saved).compress(x)["strings"] == strings
    codec = load_machine_codec(saved, load_model(task_spec, task_spec.weights), "seg")
    predicted = codec.decode(codec.encode(textured_image(70, 90, seed=3)).data)
    assert predicted.shape == (70, 90) and set(np.unique(predicted).tolist()) <= {0, 1, 2, 3}


def test_a_secondary_task_on_the_primary_gate_codes_the_primary_bitstream(
    primary, sample_prepared, tmp_path
):
    """`gate: primary`: the primary branch's gate, frozen, so the secondary task's machine
    bitstream is the primary's byte for byte (the same rate); the rest of its branch trains."""
    from icmflow.codecs.checkpoint import read_checkpoint

    path, fg_spec = primary
    branch = read_checkpoint(path)["icmflow"]["task_branch"]
    gate = {k.removeprefix("gate."): v for k, v in branch.items() if k.startswith("gate.")}
    model, objective, result, task_spec, moved = _secondary(
        path, "semantic_segmentation", tmp_path, sample_prepared, gate="primary", primary_gate=gate
    )
    assert moved and not any(k.startswith("gate.") for k in moved)
    saved = tmp_path / "secondary.pth.tar"
    save_checkpoint(
        saved,
        model.codec,
        arch="bmshj2018-hyperprior",
        model_args={"N": N, "M": M},
        step=2,
        loss=result.last["loss"],
        optimizer=result.optimizer,
        aux_optimizer=result.aux_optimizer,
        extra=objective.checkpoint_extra(),
    )
    rgb = textured_image(70, 90, seed=3)
    ours = load_machine_codec(saved, load_model(task_spec, task_spec.weights), "seg").encode(rgb)
    network = load_model(fg_spec, fg_spec.weights)
    theirs = load_machine_codec(path, network, "fg", foreground=True).encode(rgb)
    assert ours.data == theirs.data and np.array_equal(ours.keep, theirs.keep)


def test_a_secondary_objective_refuses_a_codec_that_would_train():
    with pytest.raises(ValueError, match="gate primary reads the primary branch's gate"):
        OBJECTIVES["compressed-domain-secondary"](lmbda=0.01, task=None, gate="primary")


# --- params entries ------------------------------------------------------------------------


FOREGROUND = {
    "kind": "foreground",
    "backend": "torchvision",
    "train": {"epochs": 1},
    "options": {"arch": "deeplabv3_resnet18"},
}


def _params(tmp_path, **codecs):
    raw = yaml.safe_load((REPO / "task-driven" / "params.yaml").read_text())
    raw["codecs"].update(codecs)
    raw["tasks"]["fg"] = FOREGROUND
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_params_take_a_secondary_task_and_a_foreground_task(tmp_path):
    from icmflow.pipeline.params import SecondaryEntry

    entry = {"family": "compressed-domain", "primary": "cd-2", "objective_args": {"task": "fg"}}
    params = load_params(_params(tmp_path, **{"cd-2-fg": entry}))
    check_registered(params)
    found = params.codec("cd-2-fg")
    assert isinstance(found, SecondaryEntry) and found.machine_task == "fg"
    assert params.training("cd-2-fg") == params.train and "cd-2-fg" in params.trained_codecs
    assert found.series_name == "secondary-fg" and found.setting == "primary cd-2"
    assert params.task("fg").kind == "foreground"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"primary": "mse-2"}, "codecs.sec.primary: 'mse-2' is a learned codec"),
        ({"primary": "nope"}, "codecs.sec.primary: 'nope' is not under codecs"),
        ({"primary": "cd-2", "lmbda": 0.1}, "codecs.sec.lmbda: unknown key"),
        ({"primary": "cd-2", "objective_args": {}}, "objective_args.task is required"),
        (
            {"primary": "cd-2", "objective_args": {"task": "yolo-shapes"}},
            "needs a torchvision DeepLabV3",
        ),
        (
            {"primary": "cd-2", "objective_args": {"task": "deeplab-shapes", "lam": 1}},
            "codecs.sec.objective_args: compressed-domain-secondary:",
        ),
    ],
)
def test_params_refuse_a_secondary_task_without_a_primary_codec(tmp_path, entry, message):
    entry = {"family": "compressed-domain", "objective_args": {"task": "deeplab-shapes"}, **entry}
    with pytest.raises(ParamsError) as caught:
        check_registered(load_params(_params(tmp_path, sec=entry)))
    assert message in str(caught.value)


def test_params_refuse_a_secondary_task_of_a_secondary_task(tmp_path):
    first = {"family": "compressed-domain", "primary": "cd-2", "objective_args": {"task": "fg"}}
    second = {**first, "primary": "first"}
    with pytest.raises(ParamsError, match="'first' is a secondary task's codec"):
        load_params(_params(tmp_path, first=first, second=second))


def test_a_foreground_task_takes_no_class_mapping(tmp_path):
    raw = yaml.safe_load((REPO / "task-driven" / "params.yaml").read_text())
    raw["tasks"]["fg"] = {
        "kind": "foreground",
        "backend": "torchvision",
        "weights": "w.pt",
        "classes": {1: 1},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"tasks\.fg: kind foreground takes no `classes`"):
        load_params(path)


def test_the_train_stage_refuses_a_primary_checkpoint_without_a_branch(tmp_path):
    from icmflow.codecs.checkpoint import save_untrained
    from icmflow.core.errors import CheckpointError
    from icmflow.pipeline.paths import Paths
    from icmflow.stages import train

    entry = {"family": "compressed-domain", "primary": "cd-2", "objective_args": {"task": "fg"}}
    params, paths = load_params(_params(tmp_path, **{"cd-2-fg": entry})), Paths(tmp_path)
    model = create_model("bmshj2018-hyperprior", seed=0, N=N, M=M)
    model.update(force=True)
    path = paths.checkpoint("cd-2")
    save_untrained(path, model, arch="bmshj2018-hyperprior", model_args={"N": N, "M": M})
    with pytest.raises(CheckpointError, match="holds no compressed-domain task branch"):
        train.run(params, paths, "cd-2-fg")
