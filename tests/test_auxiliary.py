"""Task-driven objectives (auxiliary-loss paper): frozen task losses, the auxiliary branch, and
that the branch's loss never reaches the decoder."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from icmflow.codecs.architectures import create_model
from icmflow.coding.learned import LearnedCodec
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.trainer import TrainSettings, train_codec
from icmflow.vision.tasks.base import TaskModelSpec
from icmflow.vision.tasks.differentiable import RcnnTaskLoss, YoloTaskLoss, load_task_loss
from icmflow.vision.tasks.offline import import_ultralytics
from tests.helpers.builders import random_task_weights
from tests.helpers.codecs import textured_image, to_batch
from tests.helpers.task_models import codec, frozen_state, random_rcnn

TINY_BRANCH = {"branch_widths": (16, 16, 16, 16, 32), "branch_groups": 8}


class Images(Dataset):
    """Four textured 64×64 crops, as `TrainingCrops` would give them."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": to_batch(textured_image(64, 64, seed=index))[0]}


@pytest.fixture(scope="module")
def yolo() -> YoloTaskLoss:
    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    # random weights: every box scores low; conf 0 keeps the top ones as pseudo-labels
    return YoloTaskLoss(model, conf=0.0, max_det=4)


@pytest.fixture(scope="module")
def rcnn(tmp_path_factory) -> RcnnTaskLoss:
    return random_rcnn(tmp_path_factory.mktemp("rcnn"))


def objective(name: str, task, **args):
    return OBJECTIVES[name](lmbda=1.0, task=task, **args)


SETTINGS = TrainSettings(steps=3, batch_size=2, lr=1e-3, aux_lr=1e-3, save_every=2)


@pytest.mark.parametrize(
    ("name", "args"),
    [("task-loss", {}), ("aux-loss", TINY_BRANCH), ("aux-loss-image", TINY_BRANCH)],
)
def test_each_objective_trains_the_codec_and_leaves_the_detector_frozen(yolo, tmp_path, name, args):
    model, before = codec(), frozen_state(yolo)
    found = objective(name, yolo, **args)
    found.bind(model)
    g_a = model.g_a[0].weight.detach().clone()
    result = train_codec(model, found, Images(), SETTINGS, log_path=tmp_path / "log.csv")
    terms = set(result.last)
    assert {"loss", "bpp", "task_loss", "targets"} <= terms
    assert ("branch_loss" in terms) == (name != "task-loss")
    assert ("mse" in terms) == (name == "aux-loss-image")
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last.values())
    assert result.last["targets"] > 0  # the box terms are exercised, not only the class term
    assert not torch.equal(model.g_a[0].weight, g_a)
    after = yolo.model.state_dict()  # weights and BatchNorm statistics alike
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not yolo.model.training and not any(p.requires_grad for p in yolo.model.parameters())


def test_the_auxiliary_loss_reaches_the_encoder_never_the_decoder(yolo):
    model = codec().train()
    found = objective("aux-loss", yolo, **TINY_BRANCH).train()
    found.bind(model)
    x = torch.cat([Images()[i]["x"][None] for i in range(2)])
    terms = found(model(x), {"x": x})
    terms["branch_loss"].backward(retain_graph=True)
    decoder = [p.grad for p in model.g_s.parameters()]
    assert all(g is None or not g.any() for g in decoder)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.g_a.parameters())
    assert all(p.grad is not None for p in found.branch.parameters())
    model.zero_grad()
    terms["task_loss"].backward()  # the main task loss does reach the decoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.g_s.parameters())


def test_the_branch_is_training_state_only_and_bitstreams_keep_their_format(yolo, tmp_path):
    model = codec()
    found = objective("aux-loss", yolo, **TINY_BRANCH)
    found.bind(model)
    train_codec(model, found, Images(), SETTINGS, log_path=tmp_path / "log.csv")
    state = found.state_dict()
    assert any(k.startswith("branch.") for k in state) and any(k.startswith("head.") for k in state)
    assert not any(k.startswith("task.") for k in state)  # the frozen detector: from its file
    found.load_state_dict(state)  # what a resumed run does
    assert set(create_model("bmshj2018-hyperprior", N=16, M=24).state_dict()) == set(
        model.state_dict()
    )
    model.update(force=True)
    coder, rgb = LearnedCodec(model.eval()), textured_image(64, 96)
    coded = coder.encode(rgb)
    assert (coder.decode(coded.data) == coded.decoded).all()


def test_faster_rcnn_task_loss_is_deterministic_frozen_and_trains(rcnn, tmp_path):
    x = torch.cat([Images()[i]["x"][None] for i in range(2)])
    targets = rcnn.targets(x)
    assert sum(len(t.boxes) for t in targets) > 0
    before, rng = frozen_state(rcnn), torch.get_rng_state()
    first, second = rcnn(x, targets), rcnn(x, targets)
    assert torch.equal(first, second)  # the same proposal sample every call
    assert torch.equal(torch.get_rng_state(), rng)  # the crop order's RNG is untouched
    assert all(torch.equal(before[k], v) for k, v in rcnn.model.state_dict().items())
    found = objective("aux-loss", rcnn, **TINY_BRANCH)
    model = codec()
    found.bind(model)
    result = train_codec(model, found, Images(), SETTINGS, log_path=tmp_path / "log.csv")
    assert torch.isfinite(torch.tensor(result.last["branch_loss"]))
    assert all(torch.equal(before[k], v) for k, v in rcnn.model.state_dict().items())


def test_an_export_cannot_be_a_task_loss(tmp_path):
    from icmflow.core.errors import CheckpointError

    spec = TaskModelSpec(kind="detection", weights=tmp_path / "model.tflite", input_size=64)
    with pytest.raises(CheckpointError, match="cannot backpropagate"):
        load_task_loss("ultralytics", spec)


def test_task_options_set_the_task_loss_and_unknown_ones_are_named(yolo):
    from icmflow.core.errors import UnknownNameError

    objective("task-loss", yolo, task_options={"conf": 0.3, "max_det": 7})
    assert (yolo.conf, yolo.max_det) == (0.3, 7)
    with pytest.raises(UnknownNameError, match="takes conf, iou, max_det"):
        objective("task-loss", yolo, task_options={"seed": 1})
    yolo.configure(conf=0.0, max_det=4)  # the fixture's settings, for the other tests


def test_the_task_of_an_objective_must_be_a_task_entry(tmp_path):
    import yaml

    from icmflow.pipeline.params import ParamsError, check_registered, load_params
    from tests.helpers.project import REPO

    params = REPO / "task-driven" / "params.yaml"
    check_registered(load_params(params))  # the project's own file is valid
    raw = yaml.safe_load(params.read_text())
    raw["codecs"]["aux-2"]["objective_args"] = {"task": "nope"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert "codecs.aux-2.objective_args.task: 'nope' is not under tasks" in str(caught.value)


def test_a_deeplab_segmentation_loss_trains_eq_6_and_stays_frozen(tmp_path):
    spec = TaskModelSpec(
        kind="semantic_segmentation",
        weights=tmp_path / "deeplab.pt",
        input_size=64,
        options={"arch": "deeplabv3_mobilenet_v3_large", "num_classes": 3},
    )
    task = load_task_loss("torchvision", random_task_weights(spec))
    x = torch.cat([Images()[i]["x"][None] for i in range(2)])
    targets = task.targets(x)
    assert targets.shape == (2, 64, 64) and torch.equal(task(x, targets), task(x, targets))
    before, model = frozen_state(task), codec()
    found = objective("aux-loss-image", task, **TINY_BRANCH)
    found.bind(model)
    result = train_codec(model, found, Images(), SETTINGS, log_path=tmp_path / "log.csv")
    assert {"task_loss", "branch_loss", "mse"} <= set(result.last)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last.values())
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())


def test_the_branches_of_tables_1_and_2(yolo):
    """Table 1 (detection): ResNeXt bottlenecks, grouped 3×3; Table 2 (segmentation): ResNet's
    basic blocks, two plain 3×3 each; both 128, 256, 256, 512 wide at strides 4–32."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    from icmflow.codecs.aux_branch import PAPER_WIDTHS, AuxiliaryBackbone, Bottleneck

    def three_by_three(block: nn.Module) -> list[tuple[int, int, int]]:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        return [(c.out_channels, c.groups, c.stride[0]) for c in convs if c.kernel_size == (3, 3)]

    latent = torch.zeros(1, 192, 4, 4)  # a 64×64 image's ŷ
    for backbone, block in (("resnext", Bottleneck), ("resnet", BasicBlock)):
        branch = AuxiliaryBackbone(192, PAPER_WIDTHS, backbone=backbone)
        blocks = [branch.conv2, *branch.stages]
        assert all(isinstance(b, block) for b in blocks)
        widths = [three_by_three(b) for b in blocks]
        if backbone == "resnext":
            assert widths == [[(128, 32, 1)], [(256, 32, 2)], [(256, 32, 2)], [(512, 32, 2)]]
        else:
            assert widths == [
                [(128, 1, 1), (128, 1, 1)],
                [(256, 1, 2), (256, 1, 1)],
                [(256, 1, 2), (256, 1, 1)],
                [(512, 1, 2), (512, 1, 1)],
            ]
        shapes = [tuple(f.shape[1:]) for f in branch(latent)]
        assert shapes == [(256, 8, 8), (256, 4, 4), (512, 2, 2)]  # strides 8, 16, 32
    with pytest.raises(ValueError, match="branch_backbone 'vgg': resnext or resnet"):
        objective("aux-loss", yolo, branch_backbone="vgg")
