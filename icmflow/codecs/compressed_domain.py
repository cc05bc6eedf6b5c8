"""Compressed-domain analysis (paper 004, Sun): task predictions from the latent, no pixels.

A hyperprior codec (`g_a`, `h_a`, `h_s`, the entropy models, `g_s`) keeps coding images for
people: CompressAI's `ScaleHyperprior` (bmshj2018-hyperprior) or `MeanScaleHyperprior`
(mbt2018-mean, the mean μ_y and scale σ_y of the paper's eq. 1), whose latent channels each
code on their own given ẑ. Each machine task gets a branch on its quantised latent ŷ:

- a **gate** (`ChannelGate`: adaptive average pool → 1×1 conv → BN → ReLU → 1×1 conv → keep/drop
  logits per channel; Gumbel-softmax with a straight-through hard decision while training, the
  arg-max in eval mode) selects the channels this task needs; only those are coded for it;
- a **transform** (`LatentTransform`: two stride-2 transposed convolutions, each followed by
  IGDN) maps the selected channels (stride 16) to the features a ResNet's stem hands to its first
  residual stage (stride 4, 64 channels for ResNet-50: the paper's 128×192×64 for 512×768 images);
- the **tail** of the task network (`SegmentationTail`: the ResNet's residual stages and the
  DeepLabV3 head; `ForegroundTail`: the same with one sigmoid output, foreground extraction;
  `DetectionTail`: the stages, FPN, RPN and box heads of a Faster R-CNN) does the rest.

The teacher of the knowledge distillation (eqs. 2–3) is the task network's own stem on the
original image: `TaskTail.stem`, frozen. The primary task trains with the codec (eq. 4,
`primary_loss`); secondary tasks read `ŷ.detach()` (the stop-gradient of eq. 6), so training them
cannot change a single weight the codec's bitstreams depend on. `FrozenCodec` is a trained
primary codec so fixed, for training a secondary task's branch alone on the shared trainer: in
eval mode whatever the trainer asks (ŷ rounded as its bitstreams decode it), without gradients
or trainable parameters, its quantiles included.

Machine bitstreams (`compress_machine`) hold the hyper-latent, the selected channels of ŷ coded
with their own scales (and means), and the gate's decision: real bits through the entropy coder.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from compressai.layers import GDN
from compressai.models import MeanScaleHyperprior, ScaleHyperprior
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection.image_list import ImageList

from icmflow.coding.bitstream import Bitstream, pack, unpack
from icmflow.coding.reproducible import IndexRecorder
from icmflow.core.errors import BitstreamError
from icmflow.vision.tasks.torchvision_backend import IMAGENET_MEAN, IMAGENET_STD, dice_loss

STEM = ("conv1", "bn1", "relu", "maxpool")
"""The ResNet layers the transform module replaces."""
TASK_BRANCH = "task_branch"
"""The key of a trained branch's state dict in its codec checkpoint's `icmflow` entry."""
LATENT_STRIDE = 16
"""Image pixels per latent position of a bmshj2018 hyperprior, each way."""


LATENT_CODECS = (ScaleHyperprior, MeanScaleHyperprior)
"""The codecs a branch reads: hyperpriors without context model, so that a subset of the
latent's channels has a bitstream of its own."""


def check_latent_codec(codec: nn.Module) -> None:
    """Raise a TypeError unless `codec` is one of `LATENT_CODECS` (not a subclass: mbt2018's
    context model decodes every channel of ŷ together)."""
    if type(codec) not in LATENT_CODECS:
        raise TypeError(
            "compressed-domain analysis codes some channels of the latent alone: it needs a "
            "bmshj2018-hyperprior (ScaleHyperprior) or mbt2018-mean (MeanScaleHyperprior), "
            f"not a {type(codec).__name__}"
        )


def hyper_latent(codec: ScaleHyperprior, y: torch.Tensor) -> torch.Tensor:
    """z = h_a(y) (h_a(|y|) for the scale-only hyperprior), as the codec's own forward pass."""
    return codec.h_a(y if isinstance(codec, MeanScaleHyperprior) else torch.abs(y))


def gaussian_parameters(
    codec: ScaleHyperprior, z_hat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """σ_y and μ_y of eq. 1 from ẑ (μ_y None: a scale-only hyperprior)."""
    parameters = codec.h_s(z_hat)
    if isinstance(codec, MeanScaleHyperprior):
        scales, means = parameters.chunk(2, 1)
        return scales, means
    return parameters, None


def _kept(means: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
    return None if means is None else means[:, keep]


class ChannelGate(nn.Module):
    """Per-image keep (1) / drop (0) decision for each of `channels` latent channels."""

    def __init__(self, channels: int, hidden: int | None = None, tau: float = 1.0):
        super().__init__()
        hidden = hidden or channels
        self.channels, self.tau = channels, tau
        self.frozen = False
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2 * channels, 1),
        )

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        """N×C gate values: hard 0/1 in both modes (straight-through gradients in training).

        As the paper's 1×1×C×2 output: the first C logits score dropping each channel (0), the
        other C keeping it (1).
        """
        logits = self.net(y_hat).view(-1, 2, self.channels)
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=True, dim=1)[:, 1]
        return (logits[:, 1] > logits[:, 0]).to(y_hat.dtype)

    def freeze(self) -> ChannelGate:
        """No gradients, and eval mode from now on (arg-max, BatchNorm's running statistics):
        another task's trained gate, reused as it decides."""
        self.frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> ChannelGate:
        return super().train(mode and not self.frozen)


class LatentTransform(nn.Module):
    """Latent channels at stride 16 → task features at stride 4 (two ×2 upsamplings)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or out_channels
        self.net = nn.Sequential(
            nn.ConvTranspose2d(in_channels, hidden, 5, stride=2, padding=2, output_padding=1),
            GDN(hidden, inverse=True),
            nn.ConvTranspose2d(hidden, out_channels, 5, stride=2, padding=2, output_padding=1),
            GDN(out_channels, inverse=True),
        )

    def forward(self, y_selected: torch.Tensor) -> torch.Tensor:
        return self.net(y_selected)


class TaskTail(nn.Module):
    """A torchvision task network split after its ResNet stem.

    `stem(x)`: the teacher's features of an image in [0, 1] (ImageNet-normalised first, as
    torchvision's weights expect), what the transform module learns to produce.
    `forward(features, size, targets)`: the rest of the network from those features; with
    `targets`, `{"task_loss": ...}` as well.
    """

    def __init__(self, resnet: nn.Module):
        super().__init__()
        layers = dict(resnet.named_children())
        missing = [name for name in (*STEM, "layer1") if name not in layers]
        if missing:
            raise ValueError(f"not a ResNet backbone: it has no {', '.join(missing)}")
        self.stem_layers = nn.Sequential(*(layers[name] for name in STEM))
        self.stage_names = [name for name in layers if name.startswith("layer")]
        self.stages = nn.ModuleList(layers[name] for name in self.stage_names)
        self.feature_channels = layers["layer1"][0].conv1.in_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem_layers((x - self.mean) / self.std)


class SegmentationTail(TaskTail):
    """DeepLabV3: the residual stages, the head, logits upsampled to the image.

    Targets: N×H×W class maps (255: ignored); the loss is the cross-entropy.
    """

    def __init__(self, deeplab: nn.Module, ignore_index: int = 255):
        super().__init__(deeplab.backbone)
        self.head, self.ignore_index = deeplab.classifier, ignore_index

    def forward(
        self, features: torch.Tensor, size: tuple[int, int], targets: torch.Tensor | None = None
    ) -> dict:
        for stage in self.stages:
            features = stage(features)
        logits = F.interpolate(self.head(features), size=size, mode="bilinear", align_corners=False)
        out = {"logits": logits}
        if targets is not None:
            out["task_loss"] = F.cross_entropy(logits, targets, ignore_index=self.ignore_index)
        return out


class ForegroundTail(SegmentationTail):
    """DeepLabV3 with one output: foreground extraction (the paper's sigmoid and Dice loss).

    Targets: N×H×W 0/1 object masks; the loss is the Dice loss of the sigmoid; eval output
    `foreground`, the N×H×W probabilities, beside the logits.
    """

    def forward(
        self, features: torch.Tensor, size: tuple[int, int], targets: torch.Tensor | None = None
    ) -> dict:
        out = super().forward(features, size)
        out["foreground"] = out["logits"][:, 0].sigmoid()
        if targets is not None:
            out["task_loss"] = dice_loss(out["foreground"], targets)
        return out


class DetectionTail(TaskTail):
    """Faster R-CNN: the residual stages, the FPN, the RPN and the box heads, at the image's own
    size (no resizing: the latent is the image's). Targets: torchvision's list of
    `{"boxes", "labels"}`; the loss is the sum of its loss dict; eval: `{"detections": [...]}`.
    """

    def __init__(self, rcnn: nn.Module):
        super().__init__(rcnn.backbone.body)
        self.returned = rcnn.backbone.body.return_layers
        self.fpn, self.rpn, self.roi_heads = rcnn.backbone.fpn, rcnn.rpn, rcnn.roi_heads

    def forward(
        self, features: torch.Tensor, size: tuple[int, int], targets: list[dict] | None = None
    ) -> dict:
        maps = OrderedDict()
        for name, stage in zip(self.stage_names, self.stages, strict=True):
            features = stage(features)
            if name in self.returned:
                maps[self.returned[name]] = features
        pyramid = self.fpn(maps)
        n = features.shape[0]
        images = ImageList(features.new_zeros(1, 1, 1, 1).expand(n, 3, *size), [size] * n)
        proposals, rpn_losses = self.rpn(images, pyramid, targets)
        detections, head_losses = self.roi_heads(pyramid, proposals, images.image_sizes, targets)
        if targets is not None and self.training:
            return {"task_loss": sum({**rpn_losses, **head_losses}.values())}
        return {"detections": detections}


def task_tail(network: nn.Module, *, foreground: bool = False) -> TaskTail:
    """The tail of a torchvision DeepLabV3 (`foreground`: one sigmoid output) or Faster R-CNN
    on a ResNet backbone."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.segmentation import DeepLabV3

    if isinstance(network, DeepLabV3):
        return ForegroundTail(network) if foreground else SegmentationTail(network)
    if isinstance(network, FasterRCNN):
        return DetectionTail(network)
    raise ValueError(
        f"a {type(network).__name__} has no compressed-domain tail: the task network is a "
        "torchvision DeepLabV3 or Faster R-CNN on a ResNet"
    )


class TaskBranch(nn.Module):
    def __init__(self, latent_channels: int, tail: TaskTail):
        super().__init__()
        self.gate = ChannelGate(latent_channels)
        self.transform = LatentTransform(latent_channels, tail.feature_channels)
        self.tail = tail

    def forward(self, y_hat: torch.Tensor, size: tuple[int, int], targets=None) -> dict:
        keep = self.gate(y_hat)
        features = self.transform(y_hat * keep[:, :, None, None])
        return {"keep": keep, "features": features, **self.tail(features, size, targets)}


class FrozenCodec(nn.Module):
    """A trained primary codec, fixed (eq. 6's stop-gradient, and more: nothing of it trains).

    `forward(x)`: ŷ as its bitstreams decode it (eval mode: rounded, around μ_y for
    mbt2018-mean) and the likelihoods of ŷ and ẑ, without gradients and without `g_s`;
    `train()` leaves the codec in eval mode; `aux_loss()` is logged, never minimised.
    """

    def __init__(self, codec: ScaleHyperprior):
        super().__init__()
        check_latent_codec(codec)
        self.codec = codec.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenCodec:
        self.training = mode  # the codec stays in eval mode
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict:
        codec = self.codec
        y = codec.g_a(x)
        z_hat, z_likelihoods = codec.entropy_bottleneck(hyper_latent(codec, y))
        scales, means = gaussian_parameters(codec, z_hat)
        y_hat, y_likelihoods = codec.gaussian_conditional(y, scales, means=means)
        return {"y_hat": y_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def aux_loss(self) -> torch.Tensor:
        with torch.no_grad():
            return self.codec.aux_loss()


@dataclass(frozen=True)
class MachineCoded:
    data: bytes
    """The machine bitstream's bytes: what the machine rate counts."""
    keep: np.ndarray
    """The gate's decision, one bool per latent channel."""


class CompressedDomainCodec(nn.Module):
    """A CompressAI `ScaleHyperprior` or `MeanScaleHyperprior` plus one `TaskBranch` per
    machine task (by name)."""

    def __init__(self, codec: ScaleHyperprior, tails: dict[str, TaskTail], primary: str):
        super().__init__()
        check_latent_codec(codec)
        if primary not in tails:
            raise ValueError(f"primary task {primary!r} is not one of {sorted(tails)}")
        self.codec, self.primary = codec, primary
        channels = codec.g_a[-1].out_channels
        self.branches = nn.ModuleDict({n: TaskBranch(channels, t) for n, t in tails.items()})

    def forward(self, x: torch.Tensor, task: str, targets=None) -> dict:
        """The codec's output (x_hat, likelihoods) and the task branch's, for a training step.

        A secondary task runs the codec without gradients (the stop-gradient of eq. 6): its loss,
        the rate of its channels included, reaches its own branch only.
        """
        captured: dict[str, torch.Tensor] = {}
        hook = self.codec.g_s.register_forward_pre_hook(
            lambda _, args: captured.setdefault("y_hat", args[0])
        )
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and task == self.primary):
                out = self.codec(x)
        finally:
            hook.remove()
        size = tuple(x.shape[-2:])
        return {**out, **self.branches[task](captured["y_hat"], size, targets)}

    def secondary_parameters(self, task: str) -> list[nn.Parameter]:
        """What a secondary task trains: its branch, nothing of the codec."""
        if task == self.primary:
            raise ValueError(f"{task!r} is the primary task: it trains with the codec")
        return list(self.branches[task].parameters())

    @torch.no_grad()
    def compress_machine(
        self, x: torch.Tensor, task: str, image_size: tuple[int, int] | None = None
    ) -> MachineCoded:
        """One image's machine bitstream for `task`: ẑ, the selected channels of ŷ, the gate.
        `image_size`: the image's (H, W) before `x` was padded (default: `x`'s)."""
        if x.shape[0] != 1:
            raise ValueError("compress_machine codes one image at a time")
        codec, branch = self.codec, self.branches[task]
        y = codec.g_a(x)
        z = hyper_latent(codec, y)
        z_strings = codec.entropy_bottleneck.compress(z)
        z_hat = codec.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        scales, means = gaussian_parameters(codec, z_hat)
        y_hat = codec.gaussian_conditional.quantize(y, "dequantize", means)
        keep = branch.gate(y_hat)[0].bool()
        recorder = IndexRecorder()
        with recorder.watching(codec):
            indexes = codec.gaussian_conditional.build_indexes(scales[:, keep])
            y_strings = codec.gaussian_conditional.compress(
                y[:, keep], indexes, means=_kept(means, keep)
            )
        gate_bits = np.packbits(keep.cpu().numpy()).tobytes()
        height, width = image_size or tuple(x.shape[-2:])
        stream = Bitstream(
            height,
            width,
            tuple(z.shape[-2:]),
            (z_strings[0], y_strings[0], gate_bits),
            recorder.value,
            0,  # pixel check 0: no pixels decode from a machine bitstream
        )
        return MachineCoded(pack(stream), keep.cpu().numpy())

    @torch.no_grad()
    def decompress_machine(self, data: bytes, task: str) -> dict:
        """The task's prediction (the tail's eval output) from its machine bitstream alone, at
        the size of the image `compress_machine` coded (the caller crops its padding)."""
        stream = unpack(data)
        codec, branch = self.codec, self.branches[task]
        z_string, y_string, gate_bits = stream.strings
        channels = branch.gate.channels
        keep = torch.from_numpy(np.unpackbits(np.frombuffer(gate_bits, np.uint8))[:channels])
        keep = keep.bool()
        z_hat = codec.entropy_bottleneck.decompress([z_string], torch.Size(stream.shape))
        scales, means = gaussian_parameters(codec, z_hat)
        recorder = IndexRecorder()
        with recorder.watching(codec):
            indexes = codec.gaussian_conditional.build_indexes(scales[:, keep])
            selected = codec.gaussian_conditional.decompress(
                [y_string], indexes, means=_kept(means, keep)
            )
        if recorder.value != stream.index_check:
            raise BitstreamError(
                f"machine bitstream of task {task!r}: the entropy decoder's scale indexes differ "
                "from the encoder's: it was coded by another checkpoint"
            )
        y_hat = scales.new_zeros(scales.shape)
        y_hat[:, keep] = selected
        features = branch.transform(y_hat)
        return branch.tail(features, tuple(LATENT_STRIDE * d for d in y_hat.shape[-2:]))


def machine_bpp(output: dict, x: torch.Tensor) -> torch.Tensor:
    """Estimated bits per pixel of ẑ and the gate's selected channels of ŷ."""
    n, _, h, w = x.shape
    keep = output["keep"][:, :, None, None]
    bits_y = -(torch.log2(output["likelihoods"]["y"]) * keep).sum()
    bits_z = -torch.log2(output["likelihoods"]["z"]).sum()
    return (bits_y + bits_z) / (n * h * w)


def distillation_loss(features: torch.Tensor, teacher: TaskTail, x: torch.Tensor):
    """L_KD = MSE(F_student, F_teacher) (eq. 2); the teacher's stem on the original image."""
    with torch.no_grad():
        target = teacher.stem(x)
    return F.mse_loss(features, target)


def machine_loss(
    output: dict,
    x: torch.Tensor,
    teacher: TaskTail,
    task_weight: float = 1.0,
    kd_weight: float = 1.0,
    machine_rate_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """L_m = λ1·L_task + λ2·L_KD (eq. 3), from `model(x, task, targets)`'s output.

    The paper gives the gate no loss of its own; `machine_rate_weight` > 0 adds the selected
    channels' rate (`machine_bpp`), which is what pushes the gate to drop channels.
    """
    task = output["task_loss"]
    kd = distillation_loss(output["features"], teacher, x)
    rate = machine_bpp(output, x)
    loss = task_weight * task + kd_weight * kd + machine_rate_weight * rate
    return {"loss": loss, "task": task, "kd": kd, "machine_bpp": rate}


def primary_loss(
    output: dict,
    x: torch.Tensor,
    teacher: TaskTail,
    lmbda: float,
    task_weight: float = 1.0,
    kd_weight: float = 1.0,
    machine_rate_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """L = L_m + λ·255²·MSE(x, x̂) + R (eq. 4 on CompressAI's λ scale: λ4 = 1, λ3 = λ·255²)."""
    terms = machine_loss(output, x, teacher, task_weight, kd_weight, machine_rate_weight)
    n, _, h, w = x.shape
    bpp = sum(-torch.log2(v).sum() for v in output["likelihoods"].values()) / (n * h * w)
    mse = F.mse_loss(output["x_hat"], x)
    loss = terms["loss"] + lmbda * 255**2 * mse + bpp
    return {**terms, "loss": loss, "bpp": bpp, "mse": mse}


def count_flops(function: Callable[[], object]) -> int:
    """Floating-point operations of one call, counted by `torch.utils.flop_counter`."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def flops_compared(
    model: CompressedDomainCodec,
    task: str,
    x: torch.Tensor,
    infer: Callable[[torch.Tensor], object],
) -> dict[str, float]:
    """FLOPs after entropy decoding, eval mode: the compressed-domain path (gate, transform,
    tail) against decoding the image (`g_s`) and calling `infer` (the whole task network) on it."""
    model.eval()
    with torch.no_grad():
        y_hat = model.codec.g_a(x).round()
        branch = model.branches[task]
        size = tuple(x.shape[-2:])
        compressed = count_flops(lambda: branch(y_hat, size))
        pixel = count_flops(lambda: infer(model.codec.g_s(y_hat)))
    return {
        "compressed_domain_flops": compressed,
        "decode_then_infer_flops": pixel,
        "saving_percent": 100 * (1 - compressed / pixel) if pixel else math.nan,
    }


def shape_only_selection(rcnn: nn.Module) -> nn.Module:
    """`rcnn`, a torchvision Faster R-CNN, made to run on meta tensors for counting FLOPs.

    Its data-dependent steps, which count no FLOPs, keep only their shapes: the RPN keeps its
    first `post_nms_top_n` proposals per image (a real run keeps as many when NMS leaves that
    many, as random weights do at the paper's sizes: the counts equal a CPU run's), RoI pooling
    returns features of the pooled shape, and no detections are post-processed.
    """
    rpn, heads = rcnn.rpn, rcnn.roi_heads
    pool = heads.box_roi_pool

    def first_proposals(proposals, objectness, image_shapes, num_anchors_per_level):
        kept = rpn.post_nms_top_n()
        scores = objectness.view(len(proposals), -1)
        return [p[:kept] for p in proposals], [s[:kept] for s in scores]

    def pooled(features, proposals, image_shapes):
        first = next(iter(features.values()))
        rois = sum(len(p) for p in proposals)
        return first.new_empty(rois, first.shape[1], *pool.output_size)

    def no_detections(class_logits, box_regression, proposals, image_shapes):
        return [], [], []

    rpn.filter_proposals = first_proposals
    pool.forward = pooled
    heads.postprocess_detections = no_detections
    return rcnn


def paper_flops(
    task: Literal["segmentation", "detection"],
    size: tuple[int, int],
    *,
    N: int = 128,
    M: int = 192,
    classes: int = 19,
) -> dict[str, float]:
    """`flops_compared` in the paper's setting (its Table I): a bmshj2018 hyperprior (N, M) and
    a torchvision ResNet-50 DeepLabV3 (output stride 8) or Faster R-CNN FPN (at the image's own
    size) with random weights, on one image of `size` (H, W), counted on meta tensors."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.models.segmentation import deeplabv3_resnet50

    h, w = size

    def network() -> nn.Module:
        if task == "segmentation":
            return deeplabv3_resnet50(
                weights=None, weights_backbone=None, num_classes=classes, aux_loss=False
            )
        rcnn = fasterrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=classes,
            min_size=min(h, w),
            max_size=max(h, w),
        )
        return shape_only_selection(rcnn)

    with torch.device("meta"):
        tail = task_tail(network())
        full = network().eval()
        x = torch.empty(1, 3, h, w)
    codec = ScaleHyperprior(N, M)  # GDN's initialisation needs real values: built, then moved
    model = CompressedDomainCodec(codec, {task: tail}, task).to("meta")
    infer = full if task == "segmentation" else lambda x_hat: full(list(x_hat))
    return flops_compared(model, task, x, infer)
