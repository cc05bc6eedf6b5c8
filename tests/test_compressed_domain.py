"""Compressed-domain analysis (paper 004): gate, transform, KD, primary and secondary tasks."""

from __future__ import annotations

import copy

import pytest
import torch
from compressai.models import JointAutoregressiveHierarchicalPriors as ContextModel
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from torchvision.models import ResNet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.resnet import BasicBlock

from icmflow.codecs.compressed_domain import (
    ChannelGate,
    CompressedDomainCodec,
    DetectionTail,
    SegmentationTail,
    flops_compared,
    machine_loss,
    paper_flops,
    primary_loss,
)
from tests.helpers.compressed_domain import CLASSES, batch, build, tiny_deeplab


def test_primary_task_trains_codec_and_branch_jointly():
    model, teachers = build()
    optimizer = torch.optim.Adam(
        [p for n, p in model.named_parameters() if not n.endswith(".quantiles")], lr=1e-3
    )
    before = copy.deepcopy(model.state_dict())
    x, labels = batch()
    model.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        terms = primary_loss(model(x, "seg", labels), x, teachers["seg"], lmbda=0.01)
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"].detach()))
    assert {"task", "kd", "bpp", "machine_bpp", "mse"} <= set(terms)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = model.state_dict()
    assert not torch.equal(before["codec.g_a.0.weight"], after["codec.g_a.0.weight"])
    assert not torch.equal(
        before["branches.seg.transform.net.0.weight"], after["branches.seg.transform.net.0.weight"]
    )
    assert torch.equal(  # the other task's branch is not part of the primary loss
        before["branches.fg.transform.net.0.weight"], after["branches.fg.transform.net.0.weight"]
    )


def test_gate_is_hard_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    gate = ChannelGate(16)
    y = torch.randn(4, 16, 4, 4)
    keep = gate.train()(y)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    gate.eval()
    first, second = gate(y), gate(y)
    assert torch.equal(first, second)
    assert set(first.unique().tolist()) <= {0.0, 1.0}


def test_secondary_task_leaves_the_codec_bit_identical():
    model, teachers = build()
    model.codec.update(force=True)
    x, labels = batch(1)
    model.eval()
    reference = model.codec.compress(x[:1])["strings"]
    codec_state = copy.deepcopy(model.codec.state_dict())
    optimizer = torch.optim.Adam(model.secondary_parameters("fg"), lr=1e-2)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        terms = machine_loss(model(x, "fg", labels), x, teachers["fg"])
        terms["loss"].backward()
        assert all(p.grad is None for p in model.codec.parameters())  # the stop-gradient
        optimizer.step()
    model.eval()
    assert model.codec.compress(x[:1])["strings"] == reference
    for key, value in model.codec.state_dict().items():
        assert torch.equal(value, codec_state[key]), key
    with pytest.raises(ValueError, match="primary task"):
        model.secondary_parameters("seg")


def _force_gate(model: CompressedDomainCodec, task: str, kept: int) -> None:
    """Make the gate keep exactly the first `kept` channels of every image."""
    last = model.branches[task].gate.net[-1]
    channels = model.branches[task].gate.channels
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.cat([torch.zeros(channels), -torch.ones(channels)]))
        last.bias[channels : channels + kept] = 1.0


def eval_latent(codec: ScaleHyperprior, image: torch.Tensor) -> torch.Tensor:
    """ŷ as the codec's eval forward pass hands it to g_s: round(y − μ) + μ (μ = 0 without
    means)."""
    captured = {}
    hook = codec.g_s.register_forward_pre_hook(lambda _, args: captured.setdefault("y", args[0]))
    with torch.no_grad():
        codec(image)
    hook.remove()
    return captured["y"]


@pytest.mark.parametrize("codec_class", [ScaleHyperprior, MeanScaleHyperprior])
def test_machine_bitstream_decodes_the_tasks_prediction_alone(codec_class):
    model, _ = build(codec_class)
    with torch.no_grad():  # latents far from zero, so that every channel costs bits
        model.codec.g_a[-1].weight.mul_(50)
    model.codec.update(force=True)
    model.eval()
    x, _ = batch(2)
    image = x[:1]
    _force_gate(model, "seg", kept=10)
    coded = model.compress_machine(image, "seg")
    assert coded.keep.tolist() == [True] * 10 + [False] * 6
    logits = model.decompress_machine(coded.data, "seg")["logits"]
    with torch.no_grad():  # the eval forward path from the same quantised latent
        branch = model.branches["seg"]
        y_hat = eval_latent(model.codec, image)
        if codec_class is MeanScaleHyperprior:  # the means are in: ŷ is no integer
            assert not torch.equal(y_hat, y_hat.round())
        selected = y_hat * branch.gate(y_hat)[:, :, None, None]
        expected = branch.tail(branch.transform(selected), (64, 64))["logits"]
    assert logits.shape == (1, CLASSES, 64, 64)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    _force_gate(model, "seg", kept=3)
    fewer = model.compress_machine(image, "seg")
    assert len(fewer.data) < len(coded.data) - 20


def test_a_codec_with_a_context_model_has_no_compressed_domain():
    with pytest.raises(TypeError, match=r"bmshj2018-hyperprior .* or mbt2018-mean"):
        CompressedDomainCodec(
            ContextModel(8, 16), {"seg": SegmentationTail(tiny_deeplab(1))}, "seg"
        )


def test_flops_of_the_compressed_domain_path_against_decode_then_infer():
    model, _ = build()
    x, _ = batch()
    figures = flops_compared(model, "seg", x[:1], tiny_deeplab(1).eval())
    assert 0 < figures["compressed_domain_flops"] < figures["decode_then_infer_flops"]
    expected = 100 * (1 - figures["compressed_domain_flops"] / figures["decode_then_infer_flops"])
    assert figures["saving_percent"] == pytest.approx(expected)


README_FLOPS = {
    # README, "Compressed-domain analysis": GFLOPs after entropy decoding, hyperprior N=128
    # M=192 and ResNet-50 task networks: (task, image size, classes, compressed, decode+infer)
    "segmentation": ((1024, 2048), 19, 2620.5, 2794.1),
    "detection": ((1024, 1472), 21, 595.6, 720.5),
}


@pytest.mark.parametrize("task", sorted(README_FLOPS))
def test_the_compressed_domain_path_is_cheaper_at_the_readmes_sizes(task):
    """The figures the README quotes, counted at their real size on meta tensors (no arithmetic
    runs: about a second each)."""
    size, classes, compressed, pixel = README_FLOPS[task]
    figures = paper_flops(task, size, classes=classes)
    assert figures["compressed_domain_flops"] < figures["decode_then_infer_flops"]
    assert figures["compressed_domain_flops"] / 1e9 == pytest.approx(compressed, abs=0.05)
    assert figures["decode_then_infer_flops"] / 1e9 == pytest.approx(pixel, abs=0.05)


def tiny_rcnn() -> FasterRCNN:
    torch.manual_seed(3)
    backbone = _resnet_fpn_extractor(ResNet(BasicBlock, [1, 1, 1, 1]), trainable_layers=5)
    return FasterRCNN(backbone, num_classes=CLASSES, min_size=64, max_size=64)


def test_detection_from_the_latent_trains_and_decodes():
    torch.manual_seed(0)
    tail = DetectionTail(tiny_rcnn())
    teacher = copy.deepcopy(tail).eval().requires_grad_(False)
    model = CompressedDomainCodec(ScaleHyperprior(8, 16), {"det": tail}, primary="det")
    x, _ = batch(4)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
    ]
    optimizer = torch.optim.Adam(
        [p for n, p in model.named_parameters() if not n.endswith(".quantiles")], lr=1e-4
    )
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        terms = primary_loss(model(x, "det", targets), x, teacher, lmbda=0.01)
        terms["loss"].backward()
        optimizer.step()
    assert torch.isfinite(terms["task"]) and terms["task"] > 0
    optimizer.zero_grad()
    model(x, "det", targets)["task_loss"].backward()  # the task loss alone reaches the encoder
    assert model.codec.g_a[0].weight.grad.abs().sum() > 0
    model.codec.update(force=True)
    model.eval()
    coded = model.compress_machine(x[:1], "det")
    (detections,) = model.decompress_machine(coded.data, "det")["detections"]
    assert set(detections) == {"boxes", "labels", "scores"}
    boxes = detections["boxes"]
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    assert bool((boxes >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all())
