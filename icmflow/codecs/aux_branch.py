"""The auxiliary branch of the auxiliary-loss encoder (Iino et al., Tables 1 and 2): training
only.

A lightweight recognition model fed from the quantised latent ŷ just before the synthesis
transform: residual upsampling blocks (RB↑2, RB, RB↑2, the residual blocks of Cheng et al.)
bring ŷ (stride 16) to stride 4, then a tiny backbone of one block per stage (conv2 at stride 4,
conv3–conv5 at strides 8, 16, 32), then a head of the recognition model's family
(`TaskLoss.head`) on conv3–conv5. The blocks are ResNeXt bottlenecks (1×1, grouped 3×3, 1×1:
Table 1, the detection branch, `resnext`) or ResNet's basic blocks (3×3, 3×3: Table 2, the
segmentation branch, `resnet`), of the same widths in both tables. It only ever reads ŷ, so its
loss reaches the encoder (and the entropy model through ŷ) but never the decoder, and it is no
part of the codec: checkpoints and bitstreams do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from compressai.layers import ResidualBlock, ResidualBlockUpsample
from torch import nn
from torchvision.models.resnet import BasicBlock

Backbone = Literal["resnext", "resnet"]

PAPER_WIDTHS = (128, 128, 256, 256, 512)
"""Channels of the upsampling blocks and of conv2–conv5 in the paper's branches (both tables)."""
STRIDES = (8, 16, 32)
"""Strides (in image pixels) of the features the head reads: conv3, conv4, conv5."""


def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """A residual block's shortcut: identity, or a strided 1×1 projection where shapes differ."""
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class Bottleneck(nn.Module):
    """ResNeXt block: 1×1, grouped 3×3 (stride), 1×1, BatchNorm, and a projected shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int):
        super().__init__()
        if out_ch % groups:
            raise ValueError(f"bottleneck width {out_ch} is not a multiple of groups {groups}")
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def residual_block(
    backbone: Backbone, in_ch: int, out_ch: int, stride: int, groups: int
) -> nn.Module:
    """One stage's block: a ResNeXt bottleneck of `groups` groups, or ResNet's basic block."""
    if backbone == "resnext":
        return Bottleneck(in_ch, out_ch, stride, groups)
    if backbone == "resnet":
        return BasicBlock(in_ch, out_ch, stride, shortcut(in_ch, out_ch, stride))
    raise ValueError(f"branch backbone {backbone!r}: resnext (Table 1) or resnet (Table 2)")


class AuxiliaryBackbone(nn.Module):
    """ŷ (M channels, stride 16) -> features of conv3, conv4, conv5 (strides 8, 16, 32)."""

    def __init__(
        self,
        latent_channels: int,
        widths: Sequence[int] = PAPER_WIDTHS,
        groups: int = 32,
        backbone: Backbone = "resnext",
    ):
        super().__init__()
        up, c2, c3, c4, c5 = widths
        self.upsample = nn.Sequential(  # Table 1's conv1: RB,↑2  RB  RB,↑2
            ResidualBlockUpsample(latent_channels, up, 2),
            ResidualBlock(up, up),
            ResidualBlockUpsample(up, up, 2),
        )
        self.conv2 = residual_block(backbone, up, c2, 1, groups)
        self.stages = nn.ModuleList(
            residual_block(backbone, c_in, c_out, 2, groups)
            for c_in, c_out in ((c2, c3), (c3, c4), (c4, c5))
        )
        self.channels = (c3, c4, c5)

    def forward(self, y_hat: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv2(self.upsample(y_hat))
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
