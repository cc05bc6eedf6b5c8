"""The compressed-domain codec kind: its objective on the trainer (ground-truth crops), the
branch kept in the checkpoint, machine bitstreams coded and read by `MachineCodec`, and the
params checks of `family: compressed-domain`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from icmflow.codecs.architectures import create_model
from icmflow.coding.machine import load_machine_codec, predict_split, write_machine_split
from icmflow.core.completion import mark_complete
from icmflow.core.errors import BitstreamError
from icmflow.pipeline.params import ParamsError, check_registered, load_params
from icmflow.training.data import TrainingCrops
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.targets import GroundTruth
from icmflow.training.trainer import TrainSettings, read_log, train_codec
from icmflow.vision.tasks.base import Detections
from icmflow.vision.tasks.differentiable import load_task_loss
from icmflow.vision.tasks.torchvision_backend import load_model
from tests.helpers.builders import save_trained
from tests.helpers.codecs import textured_image
from tests.helpers.project import REPO
from tests.helpers.task_models import TASKS, task_spec

SETTINGS = TrainSettings(steps=2, batch_size=2, lr=1e-3, aux_lr=1e-3)


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_a_trained_branch_predicts_from_the_machine_bitstream(kind, sample_prepared, tmp_path):
    spec = task_spec(kind, tmp_path)
    task = load_task_loss("torchvision", spec)
    frozen = {k: v.clone() for k, v in task.model.state_dict().items()}
    model = create_model("bmshj2018-hyperprior", seed=0, N=16, M=24)
    objective = OBJECTIVES["compressed-domain"](lmbda=0.01, task=task, machine_rate_weight=0.1)
    assert objective.ground_truth == TASKS[kind][1]  # ground truth by default, as the paper
    objective.bind(model)
    crops = TrainingCrops(
        sample_prepared["train"], {}, 64, targets=GroundTruth(TASKS[kind][1], {1: 1, 2: 2, 3: 3})
    )
    result = train_codec(model, objective, crops, SETTINGS, log_path=tmp_path / "log.csv")
    assert {"task", "kd", "machine_bpp", "bpp", "mse", "kept_fraction"} <= set(result.last)
    assert all(np.isfinite(v) for v in result.last.values())
    assert all(torch.equal(frozen[k], v) for k, v in task.model.state_dict().items())
    assert not any(k.startswith("task.") for k in objective.state_dict())  # frozen: not saved
    checkpoint = save_trained(
        result,
        tmp_path / "checkpoint.pth.tar",
        {"N": 16, "M": 24},
        step=2,
        extra=objective.checkpoint_extra(),
    )
    codec = load_machine_codec(checkpoint, load_model(spec, spec.weights), "task")
    rgb = textured_image(70, 90, seed=3)  # padded to 128×128 for the codec
    coded = codec.encode(rgb)
    assert coded.keep.shape == (24,) and coded.keep.dtype == bool
    predicted = codec.decode(coded.data)
    again = codec.decode(coded.data)
    if kind == "semantic_segmentation":
        assert predicted.shape == (70, 90) and np.array_equal(predicted, again)
        assert set(np.unique(predicted).tolist()) <= {0, 1, 2, 3}
    else:
        assert isinstance(predicted, Detections)
        assert np.array_equal(predicted.boxes, again.boxes)
        assert (predicted.boxes[:, [0, 2]] <= 90).all() and (predicted.boxes[:, [1, 3]] <= 70).all()
    if kind == "semantic_segmentation":  # a coded split: its files, rate and predictions
        val = sample_prepared["val"]
        summary = write_machine_split(codec, val, tmp_path / "coded", "val")
        mark_complete(tmp_path / "coded", "test")
        predictions, rate = predict_split(codec, tmp_path / "coded", "val")
        files = sorted((tmp_path / "coded" / "machine" / "val").glob("*.bin"))
        pixels = sum(image["width"] * image["height"] for image in val.images)
        assert len(files) == len(val.images) == len(predictions) and rate == summary
        assert rate["bpp"] == pytest.approx(8 * sum(f.stat().st_size for f in files) / pixels)
        first = val.images[0]
        assert predictions[first["id"]].shape == (first["height"], first["width"])
        first_file, second_file = files[0].read_bytes(), files[1].read_bytes()
        files[0].write_bytes(second_file)  # swapped: decodable, but another image's
        files[1].write_bytes(first_file)
        with pytest.raises(BitstreamError, match=f"{files[0].name}: .* rerun `icmflow encode"):
            predict_split(codec, tmp_path / "coded", "val")
        files[0].unlink()
        with pytest.raises(BitstreamError, match=f"{files[0].name}: missing"):
            predict_split(codec, tmp_path / "coded", "val")


def test_a_checkpoint_without_a_branch_is_refused(tmp_path):
    from icmflow.codecs.checkpoint import save_untrained
    from icmflow.core.errors import CheckpointError

    model = create_model("bmshj2018-hyperprior", seed=0, N=16, M=24)
    model.update(force=True)
    path = save_untrained(
        tmp_path / "c.pth.tar", model, arch="bmshj2018-hyperprior", model_args={"N": 16, "M": 24}
    )
    spec = task_spec("semantic_segmentation", tmp_path)
    with pytest.raises(CheckpointError, match="no compressed-domain task branch"):
        load_machine_codec(path, load_model(spec, spec.weights), "task")


def test_a_mean_scale_codec_trains_and_codes_machine_bitstreams(sample_prepared, tmp_path):
    """Eq. 1's μ_y: an mbt2018-mean codec's gated channels are coded with their means."""
    spec = task_spec("semantic_segmentation", tmp_path)
    objective = OBJECTIVES["compressed-domain"](
        lmbda=0.01, task=load_task_loss("torchvision", spec), targets="model"
    )
    with pytest.raises(TypeError, match=r"bmshj2018-hyperprior .* or mbt2018-mean"):
        objective.bind(create_model("mbt2018", seed=0, N=16, M=24))  # its context model
    model = create_model("mbt2018-mean", seed=0, N=16, M=24)
    objective.bind(model)
    crops = TrainingCrops(sample_prepared["train"], {}, 64)
    result = train_codec(model, objective, crops, SETTINGS, log_path=tmp_path / "log.csv")
    assert all(np.isfinite(v) for v in result.last.values())
    checkpoint = save_trained(
        result,
        tmp_path / "checkpoint.pth.tar",
        {"N": 16, "M": 24},
        step=2,
        extra=objective.checkpoint_extra(),
        arch="mbt2018-mean",
    )
    codec = load_machine_codec(checkpoint, load_model(spec, spec.weights), "task")
    coded = codec.encode(textured_image(70, 90, seed=3))
    predicted = codec.decode(coded.data)
    assert predicted.shape == (70, 90) and np.array_equal(predicted, codec.decode(coded.data))


class Stop(Exception):
    pass


def weights(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for m in modules for n, p in m.named_parameters()}


def test_kd_warmup_trains_on_the_distillation_loss_alone_and_resumes_in_it(
    sample_prepared, tmp_path, monkeypatch
):
    """Paper 004: "about 10 % of the total number of iterations, we only train with L_KD";
    here 3 of 4 steps, and a run stopped after step 2 resumes at step 3, still on L_KD."""
    task = load_task_loss("torchvision", task_spec("semantic_segmentation", tmp_path))
    cls = OBJECTIVES["compressed-domain"]
    args = {"task": task, "targets": "model", "kd_weight": 1.5, "machine_rate_weight": 0.1}
    settings = TrainSettings(steps=4, batch_size=2, lr=1e-3, aux_lr=1e-3, save_every=2)
    crops = TrainingCrops(sample_prepared["train"], {}, 64)
    runs = []

    def train(state):
        model = create_model("bmshj2018-hyperprior", seed=0, N=16, M=24)
        objective = cls(lmbda=0.01, kd_warmup=0.75, **args)
        objective.bind(model)
        runs.append((model, objective, weights(model, objective)))
        return train_codec(
            model, objective, crops, settings, log_path=tmp_path / "log.csv", state_path=state
        )

    calls, forward = {"n": 0}, cls.forward

    def stopping(self, *inputs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Stop
        return forward(self, *inputs)

    monkeypatch.setattr(cls, "forward", stopping)
    with pytest.raises(Stop):
        train(tmp_path / "state.pt")
    model, objective, before = runs[0]  # two steps on L_KD: neither g_s nor the tail moved
    after = weights(model, objective)  # parameters: BatchNorm statistics follow the forward
    for moved in ("g_a.0.weight", "branch.transform.net.0.weight"):
        assert not torch.equal(before[moved], after[moved]), moved
    kept = [k for k in before if k.startswith(("g_s.", "branch.tail."))]
    assert len(kept) > 20, kept
    assert [k for k in kept if not torch.equal(before[k], after[k])] == []
    monkeypatch.setattr(cls, "forward", forward)
    train(tmp_path / "state.pt")
    rows = read_log(tmp_path / "log.csv")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows[:3]:
        assert row["loss"] == pytest.approx(1.5 * row["kd"], rel=1e-5)
    last = rows[3]
    eq4 = last["task"] + 1.5 * last["kd"] + 0.1 * last["machine_bpp"]
    eq4 += 0.01 * 255**2 * last["mse"] + last["bpp"]
    assert last["loss"] == pytest.approx(eq4, rel=1e-5)
    assert last["loss"] > 1.5 * last["kd"] * 1.01


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "mbt2018"}, "codecs.cd-2.arch: 'mbt2018': a compressed-domain codec"),
        ({"objective_args": {"task": "yolo-shapes"}}, "needs a torchvision DeepLabV3"),
        ({"objective_args": {}}, "objective_args.task is required"),
    ],
)
def test_params_refuse_what_the_branch_cannot_use(tmp_path, change, message):
    raw = yaml.safe_load((REPO / "task-driven" / "params.yaml").read_text())
    check_registered(load_params(REPO / "task-driven" / "params.yaml"))
    raw["codecs"]["cd-2"] = {**raw["codecs"]["cd-2"], **change}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as caught:
        check_registered(load_params(path))
    assert message in str(caught.value)


def test_params_take_a_mean_scale_codec_and_the_kd_warmup(tmp_path):
    raw = yaml.safe_load((REPO / "task-driven" / "params.yaml").read_text())
    raw["codecs"]["cd-2"]["arch"] = "mbt2018-mean"
    raw["codecs"]["cd-2"]["objective_args"]["kd_warmup"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    check_registered(load_params(path))
