"""Tiny compressed-domain codecs: a hyperprior with two segmentation branches."""

from __future__ import annotations

import copy

import torch
from compressai.models import ScaleHyperprior
from torchvision.models import ResNet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

from icmflow.codecs.compressed_domain import CompressedDomainCodec, SegmentationTail

CLASSES = 3


def tiny_deeplab(seed: int) -> DeepLabV3:
    """DeepLabV3 on a ResNet of one basic block per stage (the paper uses ResNet-50)."""
    torch.manual_seed(seed)
    resnet = ResNet(BasicBlock, [1, 1, 1, 1])
    return DeepLabV3(IntermediateLayerGetter(resnet, {"layer4": "out"}), DeepLabHead(512, CLASSES))


def build(
    codec_class: type[ScaleHyperprior] = ScaleHyperprior,
) -> tuple[CompressedDomainCodec, dict[str, SegmentationTail]]:
    """Codec (N=8, M=16) with branches `seg` (primary) and `fg`, and their frozen teachers."""
    torch.manual_seed(0)
    codec = codec_class(8, 16)
    tails = {"seg": SegmentationTail(tiny_deeplab(1)), "fg": SegmentationTail(tiny_deeplab(2))}
    teachers = {
        name: copy.deepcopy(tail).eval().requires_grad_(False) for name, tail in tails.items()
    }
    return CompressedDomainCodec(codec, tails, primary="seg"), teachers


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64×64 images and random class maps."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 64, 64, generator=generator)
    labels = torch.randint(0, CLASSES, (2, 64, 64), generator=generator)
    return x, labels
