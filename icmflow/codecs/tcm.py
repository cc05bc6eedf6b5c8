"""TCM: the mixed Transformer-CNN codec of Liu, Sun and Katto, "Learned Image Compression with
Mixed Transformer-CNN Architectures" (CVPR 2023), as a CompressAI model registered as `tcm`.

Following the paper (and its reference code, github.com/jmliu206/LIC_TCM):

- Analysis g_a, synthesis g_s and the hyper transforms h_a, h_mean_s, h_scale_s are residual
  (de)convolutions interleaved with ConvTransBlocks: a 1×1 convolution splits the channels into a
  CNN half (a residual block) and a Swin Transformer half (window, then shifted-window
  multi-head self-attention with relative position bias, alternating block by block); the halves
  are concatenated, fused by a 1×1 convolution and added to the input. Windows are 8×8 in g_a
  and g_s, 4×4 (head size 32) in the hyper transforms.
- The channel-wise conditional entropy model: y is split into `num_slices` slices; each slice's
  mean and scale come from the hyperprior and up to `max_support_slices` decoded slices, passed
  through a Swin attention block (SWAtten) and three 3×3 convolutions; latent residual
  prediction (LRP) adds 0.5·tanh(·) of a prediction from the mean support and the quantised
  slice. z is coded with an EntropyBottleneck, the y slices with a GaussianConditional.
- Training quantises y and z by rounding with a straight-through gradient around their means
  (medians for z), as the reference does; likelihoods follow CompressAI (noise in training).

Parameters (counted here, as the reference's layers): N=64 45.18 M, N=128 76.57 M with the
paper's `config` and `head_dim`; about 27.7 M of it is the slice entropy model.

Sizes: images of any size are padded bottom/right by edge replication to a multiple of 64 (the
transforms downsample y by 16 and z by 64) and decoded images are cropped back. Window attention
pads its feature map with zeros to a multiple of the window and masks the padding out of every
attention, so no real position attends to padding. Where nothing needs padding (sides that are
multiples of 128 px) the network is the reference's: its state-dict keys are the same, so its
checkpoints load with `TCM.from_state_dict`, and on a 256×384 image its outputs and likelihoods
matched the reference's bit for bit. (The reference breaks on latents of at most one window,
i.e. images of 128 px or less.)

`compress(x)` returns `{"strings": [slice 0, …, slice num_slices-1, z], "shape": (H, W)}`: one
rANS string per image per slice, coded through CompressAI's GaussianConditional with indexes
from its `build_indexes`, and the image's size, which `decompress(strings, shape)` needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import (
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv1x1,
    conv3x3,
    subpel_conv3x3,
)
from compressai.models import CompressionModel
from compressai.registry import register_model
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

STRIDE = 64
"""How much g_a and h_a downsample together: images are padded to a multiple of it."""

WINDOW = 8
HYPER_WINDOW, HYPER_HEAD_DIM = 4, 32
ATTENTION_HEAD_DIM = 16

SliceCoder = Callable[[int, Tensor, Tensor], Tensor]
"""Codes slice i given its mean and scale and returns it quantised."""


def ste_round(x: Tensor) -> Tensor:
    """round(x) exactly, with the identity's gradient."""
    return torch.round(x) + (x - x.detach())


class WindowAttention(nn.Module):
    """(Shifted-)window multi-head self-attention with relative position bias on B×H×W×C maps.

    Maps are zero-padded bottom/right to a multiple of the window and the padded positions are
    masked out as keys; the output is cropped back.
    """

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.window_size, self.shift = window_size, window_size // 2 if shifted else 0
        self.embedding_layer = nn.Linear(dim, 3 * dim)
        self.linear = nn.Linear(dim, dim)
        span = 2 * window_size - 1
        self.relative_position_params = nn.Parameter(torch.zeros(self.heads, span, span))
        nn.init.trunc_normal_(self.relative_position_params, std=0.02)
        grid = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        coords = torch.stack(grid).flatten(1)
        offsets = coords[:, :, None] - coords[:, None, :] + window_size - 1
        self.register_buffer("relative_index", offsets, persistent=False)

    def _windows(self, x: Tensor) -> Tensor:
        """B×Hp×Wp×C -> B×windows×(window²)×C."""
        b, h, w, c = x.shape
        s = self.window_size
        x = x.view(b, h // s, s, w // s, s, c).transpose(2, 3)
        return x.reshape(b, -1, s * s, c)

    def _mask(self, height: int, width: int, device: torch.device) -> Tensor | None:
        """windows×(window²)×(window²), True where a query may not see a key: keys in another
        region of the cyclic shift, or padding (rows of padded queries see everything)."""
        s, shift = self.window_size, self.shift
        padded_h, padded_w = height + -height % s, width + -width % s
        if not shift and (padded_h, padded_w) == (height, width):
            return None
        rows = torch.arange(padded_h, device=device)[:, None]
        cols = torch.arange(padded_w, device=device)[None, :]
        pad = torch.roll((rows >= height) | (cols >= width), (-shift, -shift), (0, 1))
        region = torch.zeros_like(pad, dtype=torch.long)
        if shift:  # Swin's regions, in shifted coordinates
            region = 3 * ((rows >= padded_h - s).long() + (rows >= padded_h - shift).long())
            region = region + (cols >= padded_w - s).long() + (cols >= padded_w - shift).long()
        region = self._windows(region[None, :, :, None])[0, :, :, 0]
        pad = self._windows(pad[None, :, :, None])[0, :, :, 0]
        mask = (region[:, :, None] != region[:, None, :]) | pad[:, None, :]
        return mask & ~mask.all(-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        s, shift = self.window_size, self.shift
        x = F.pad(x, (0, 0, 0, -w % s, 0, -h % s))
        padded_h, padded_w = x.shape[1:3]
        x = torch.roll(x, (-shift, -shift), (1, 2))
        windows = self._windows(x)
        qkv = self.embedding_layer(windows).unflatten(-1, (3, self.heads, self.head_dim))
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5)  # each B×heads×windows×(window²)×head_dim
        bias = self.relative_position_params[:, self.relative_index[0], self.relative_index[1]]
        sim = q @ k.transpose(-1, -2) * self.head_dim**-0.5 + bias[:, None]
        mask = self._mask(h, w, x.device)
        if mask is not None:
            sim = sim.masked_fill(mask, float("-inf"))
        out = (sim.softmax(-1) @ v).permute(0, 2, 3, 1, 4).flatten(-2)
        out = self.linear(out).view(b, padded_h // s, padded_w // s, s, s, c)
        out = out.transpose(2, 3).reshape(b, padded_h, padded_w, c)
        return torch.roll(out, (shift, shift), (1, 2))[:, :h, :w]


class SwinLayer(nn.Module):
    """Pre-norm Swin Transformer layer on B×H×W×C: window attention, then a 4× MLP."""

    def __init__(
        self, dim: int, head_dim: int, window_size: int, drop_path: float, shifted: bool
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowAttention(dim, head_dim, window_size, shifted)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.msa(self.ln1(x)))
        return x + self.drop_path(self.mlp(self.ln2(x)))


class ConvTransBlock(nn.Module):
    """The paper's mixed block on B×2N×H×W: a residual-block half and a Swin half, fused."""

    def __init__(
        self, dim: int, head_dim: int, window_size: int, drop_path: float, shifted: bool
    ) -> None:
        super().__init__()
        self.dim = dim
        self.conv1_1 = conv1x1(2 * dim, 2 * dim)
        self.conv1_2 = conv1x1(2 * dim, 2 * dim)
        self.conv_block = ResidualBlock(dim, dim)
        self.trans_block = SwinLayer(dim, head_dim, window_size, drop_path, shifted)

    def forward(self, x: Tensor) -> Tensor:
        conv_x, trans_x = self.conv1_1(x).split(self.dim, dim=1)
        conv_x = self.conv_block(conv_x) + conv_x  # as the reference: twice the identity
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1))


class SwinBlock(nn.Module):
    """A window and a shifted-window Swin layer on B×C×H×W."""

    def __init__(self, dim: int, head_dim: int, window_size: int) -> None:
        super().__init__()
        self.block_1 = SwinLayer(dim, head_dim, window_size, 0.0, shifted=False)
        self.block_2 = SwinLayer(dim, head_dim, window_size, 0.0, shifted=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.block_1(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class SWAtten(AttentionBlock):
    """The paper's Swin attention on a slice's support: CompressAI's attention block with a
    Swin block as its non-local branch, between 1×1 convolutions to and from `inner` channels."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__(inner)
        self.in_conv = conv1x1(channels, inner)
        self.non_local_block = SwinBlock(inner, ATTENTION_HEAD_DIM, WINDOW)
        self.out_conv = conv1x1(inner, channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_conv(x)
        out = self.conv_a(x) * torch.sigmoid(self.conv_b(self.non_local_block(x)))
        return self.out_conv(out + x)


def _stage(
    dim: int, blocks: int, head_dim: int, window_size: int, drop_paths: Sequence[float]
) -> list[nn.Module]:
    """`blocks` ConvTransBlocks alternating window and shifted-window attention."""
    return [
        ConvTransBlock(dim, head_dim, window_size, drop_paths[i], shifted=i % 2 == 1)
        for i in range(blocks)
    ]


def _slice_transform(in_ch: int, hidden: Sequence[int], out_ch: int) -> nn.Sequential:
    """3×3 convolutions with GELUs between them."""
    widths = [in_ch, *hidden]
    layers: list[nn.Module] = []
    for a, b in pairwise(widths):
        layers += [conv3x3(a, b), nn.GELU()]
    return nn.Sequential(*layers, conv3x3(widths[-1], out_ch))


def _argument_problem(
    config: Sequence[int], head_dim: Sequence[int], N: int, M: int, num_slices: int, inner: int
) -> str:
    if len(config) != 6 or len(head_dim) != 6:
        return "config and head_dim need 6 entries (3 analysis, 3 synthesis stages)"
    if any(N % d for d in (*head_dim, HYPER_HEAD_DIM)):
        return f"N={N} must be a multiple of every head_dim and of {HYPER_HEAD_DIM}"
    if M % num_slices:
        return f"M={M} must be a multiple of num_slices={num_slices}"
    if inner % ATTENTION_HEAD_DIM:
        return f"attention_dim={inner} must be a multiple of {ATTENTION_HEAD_DIM}"
    return ""


@register_model("tcm")
class TCM(CompressionModel):
    """TCM (Liu et al., CVPR 2023). Positional arguments as the reference's; keyword-only
    ones size parts the reference fixes: `z_channels` (hyper-latent channels), `attention_dim`
    (SWAtten's inner width) and `slice_hidden` (the slice transforms' hidden widths).
    `max_support_slices` < 0 conditions each slice on all earlier ones."""

    def __init__(
        self,
        config: Sequence[int] = (2, 2, 2, 2, 2, 2),
        head_dim: Sequence[int] = (8, 16, 32, 32, 16, 8),
        drop_path_rate: float = 0.0,
        N: int = 128,
        M: int = 320,
        num_slices: int = 5,
        max_support_slices: int = 5,
        *,
        z_channels: int = 192,
        attention_dim: int = 128,
        slice_hidden: Sequence[int] = (224, 128),
    ) -> None:
        super().__init__()
        problem = _argument_problem(config, head_dim, N, M, num_slices, attention_dim)
        if problem:
            raise ValueError(f"tcm: {problem}")
        self.num_slices, self.max_support_slices = num_slices, max_support_slices
        blocks = sum(config)
        rates = [drop_path_rate * i / max(blocks - 1, 1) for i in range(blocks)]
        drop = [rates[sum(config[:i]) : sum(config[: i + 1])] for i in range(6)]
        stage = [_stage(N, config[i], head_dim[i], WINDOW, drop[i]) for i in range(6)]
        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, 2 * N, 2),
            *stage[0],
            ResidualBlockWithStride(2 * N, 2 * N, 2),
            *stage[1],
            ResidualBlockWithStride(2 * N, 2 * N, 2),
            *stage[2],
            conv3x3(2 * N, M, stride=2),
        )
        self.g_s = nn.Sequential(
            ResidualBlockUpsample(M, 2 * N, 2),
            *stage[3],
            ResidualBlockUpsample(2 * N, 2 * N, 2),
            *stage[4],
            ResidualBlockUpsample(2 * N, 2 * N, 2),
            *stage[5],
            subpel_conv3x3(2 * N, 3, 2),
        )
        no_drop = [0.0] * max(config)
        self.h_a = nn.Sequential(
            ResidualBlockWithStride(M, 2 * N, 2),
            *_stage(N, config[0], HYPER_HEAD_DIM, HYPER_WINDOW, no_drop),
            conv3x3(2 * N, z_channels, stride=2),
        )
        self.h_mean_s, self.h_scale_s = (
            nn.Sequential(
                ResidualBlockUpsample(z_channels, 2 * N, 2),
                *_stage(N, config[3], HYPER_HEAD_DIM, HYPER_WINDOW, no_drop),
                subpel_conv3x3(2 * N, M, 2),
            )
            for _ in range(2)
        )
        width = M // num_slices
        support = [M + width * self._support_count(i) for i in range(num_slices)]
        # one-module Sequentials: the reference's state-dict keys
        self.atten_mean, self.atten_scale = (
            nn.ModuleList(nn.Sequential(SWAtten(c, attention_dim)) for c in support)
            for _ in range(2)
        )
        self.cc_mean_transforms, self.cc_scale_transforms = (
            nn.ModuleList(_slice_transform(c, slice_hidden, width) for c in support)
            for _ in range(2)
        )
        self.lrp_transforms = nn.ModuleList(
            _slice_transform(c + width, slice_hidden, width) for c in support
        )
        self.entropy_bottleneck = EntropyBottleneck(z_channels)
        self.gaussian_conditional = GaussianConditional(None)

    def _support_count(self, index: int) -> int:
        """How many decoded slices condition slice `index`."""
        return index if self.max_support_slices < 0 else min(index, self.max_support_slices)

    def _decode_slices(self, z_hat: Tensor, code: SliceCoder) -> Tensor:
        """ŷ from ẑ slice by slice; `code(i, mean, scale)` returns slice i quantised."""
        latent_means, latent_scales = self.h_mean_s(z_hat), self.h_scale_s(z_hat)
        y_hat_slices: list[Tensor] = []
        for i in range(self.num_slices):
            support = y_hat_slices[: self._support_count(i)]
            mean_support = self.atten_mean[i](torch.cat([latent_means, *support], dim=1))
            mean = self.cc_mean_transforms[i](mean_support)
            scale_support = self.atten_scale[i](torch.cat([latent_scales, *support], dim=1))
            y_hat_slice = code(i, mean, self.cc_scale_transforms[i](scale_support))
            lrp = self.lrp_transforms[i](torch.cat([mean_support, y_hat_slice], dim=1))
            y_hat_slices.append(y_hat_slice + 0.5 * torch.tanh(lrp))
        return torch.cat(y_hat_slices, dim=1)

    def quantised_latent(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """ŷ, the synthesis transform's input, and the likelihoods of y and z, for x (any size:
        padded to whole windows). In eval mode ŷ is what `compress` codes."""
        y = self.g_a(_pad(x))
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        medians = self.entropy_bottleneck._get_medians()
        y_slices, y_likelihoods = y.chunk(self.num_slices, dim=1), []

        def code(i: int, mean: Tensor, scale: Tensor) -> Tensor:
            y_likelihoods.append(self.gaussian_conditional(y_slices[i], scale, mean)[1])
            return ste_round(y_slices[i] - mean) + mean

        y_hat = self._decode_slices(ste_round(z - medians) + medians, code)
        return y_hat, {"y": torch.cat(y_likelihoods, dim=1), "z": z_likelihoods}

    def forward(self, x: Tensor) -> dict[str, Any]:
        height, width = x.shape[-2:]
        y_hat, likelihoods = self.quantised_latent(x)
        return {"x_hat": self.g_s(y_hat)[..., :height, :width], "likelihoods": likelihoods}

    def compress(self, x: Tensor) -> dict[str, Any]:
        y = self.g_a(_pad(x))
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        y_slices, y_strings = y.chunk(self.num_slices, dim=1), []

        def code(i: int, mean: Tensor, scale: Tensor) -> Tensor:
            indexes = self.gaussian_conditional.build_indexes(scale)
            y_strings.append(self.gaussian_conditional.compress(y_slices[i], indexes, mean))
            return self.gaussian_conditional.quantize(y_slices[i], "dequantize", mean)

        self._decode_slices(self.entropy_bottleneck.decompress(z_strings, z.shape[-2:]), code)
        return {"strings": [*y_strings, z_strings], "shape": x.shape[-2:]}

    def latent_from_strings(
        self, strings: Sequence[Sequence[bytes]], shape: Sequence[int]
    ) -> Tensor:
        """ŷ decoded from `compress`'s strings and shape (what `decompress` feeds g_s)."""
        height, width = shape
        z_size = (math.ceil(height / STRIDE), math.ceil(width / STRIDE))
        z_hat = self.entropy_bottleneck.decompress(strings[-1], z_size)

        def code(i: int, mean: Tensor, scale: Tensor) -> Tensor:
            indexes = self.gaussian_conditional.build_indexes(scale)
            return self.gaussian_conditional.decompress(strings[i], indexes, means=mean)

        return self._decode_slices(z_hat, code)

    def decompress(
        self, strings: Sequence[Sequence[bytes]], shape: Sequence[int]
    ) -> dict[str, Tensor]:
        height, width = shape
        x_hat = self.g_s(self.latent_from_strings(strings, shape)).clamp_(0, 1)
        return {"x_hat": x_hat[..., :height, :width]}

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Tensor]) -> TCM:
        """The paper's configuration, with N, M, num_slices and z channels read from a state
        dict (an icmflow checkpoint's or the reference's, whose keys are the same)."""
        slices = {key.split(".")[1] for key in state_dict if key.startswith("lrp_transforms.")}
        net = cls(
            N=state_dict["g_a.0.conv1.weight"].size(0) // 2,
            M=state_dict["g_s.0.subpel_conv.0.weight"].size(1),
            num_slices=len(slices),
            z_channels=state_dict["entropy_bottleneck.quantiles"].size(0),
        )
        net.load_state_dict(state_dict)
        return net


def _pad(x: Tensor) -> Tensor:
    """Edge-replicate bottom/right to a multiple of `STRIDE`."""
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % STRIDE, 0, -height % STRIDE), mode="replicate")
