"""Faster coding on the CPU: the analysis and synthesis transforms in channels-last, GDN blocked.

Most of a convolutional codec's time on a CPU goes to `g_a` and `g_s`. Measured on one core
(Kodak, bmshj2018-hyperprior N=128 M=192), three changes halve it:

- oneDNN runs the convolutions about 1.4× faster on channels-last (NHWC) tensors;
- CompressAI's GDN, a 1×1 convolution between whole-image elementwise passes, costs as much
  as the largest convolution; on rows of channels-last pixels, in blocks that stay in the
  cache, it takes half the time (`BlockedGDN`);
- the last transposed convolution, which outputs the 3 image channels, vectorises badly; as
  the equivalent convolution to 4 × 3 channels and a pixel shuffle it is 2.2× faster
  (`SubpixelDeconv`).

`speed_up_transforms` changes a model in place and leaves its state dict as it was (same keys,
same values): the transforms' 4-D weights move to channels-last, the GDNs and the image
layer become modules holding the same parameters, and hooks hand the transforms
channels-last inputs and return ordinary contiguous outputs, so the entropy models and
everything after them see the tensors they always saw. Only transforms built entirely of the
modules in `CHANNELS_LAST_SAFE` are touched (a transform with attention windows or `view`s,
TCM's, is left alone). The results equal the plain model's to float rounding; the bitstream
checks (`icmflow.coding.reproducible`) hold because encoding and decoding both run this path.
"""

from __future__ import annotations

import torch
from compressai.layers import (
    GDN,
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
)
from torch import nn

TRANSFORMS = ("g_a", "g_s")
CHANNELS_LAST_SAFE = (
    nn.Sequential,
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.Sigmoid,
    nn.PixelShuffle,
    nn.Identity,
    GDN,
    ResidualBlock,
    ResidualBlockWithStride,
    ResidualBlockUpsample,
    AttentionBlock,
)
SAFE_AS_A_WHOLE = (GDN, AttentionBlock)
"""Modules whose parts need no check: parametrizers (GDN), a local residual class (attention)."""
BLOCK_ROWS = 1024
"""Pixels per GDN block: 1024 × 192 channels × 4 bytes stays well inside a 2 MiB L2 cache."""


class BlockedGDN(GDN):
    """CompressAI's `GDN` (same parameters, same function) computed on channels-last pixels
    in blocks of `BLOCK_ROWS`: x² → x²·γᵀ + β → (r)sqrt → × x, each block while it is cached."""

    def __init__(self, gdn: GDN):
        nn.Module.__init__(self)
        self.inverse = gdn.inverse
        self.beta_reparam, self.beta = gdn.beta_reparam, gdn.beta
        self.gamma_reparam, self.gamma = gdn.gamma_reparam, gdn.gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        n, c, h, w = x.shape
        beta = self.beta_reparam(self.beta)
        gamma_t = self.gamma_reparam(self.gamma).t().contiguous()
        pixels = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: x is channels-last
        out = torch.empty_like(pixels)
        for start in range(0, pixels.shape[0], BLOCK_ROWS):
            block = pixels[start : start + BLOCK_ROWS]
            norm = torch.addmm(beta, block.square(), gamma_t, out=out[start : start + BLOCK_ROWS])
            (norm.sqrt_() if self.inverse else norm.rsqrt_()).mul_(block)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)


class SubpixelDeconv(nn.Module):
    """CompressAI's `deconv` (5×5, stride 2, padding 2, output padding 1; same parameters)
    computed as a 3×3 convolution to the 4 output phases and a pixel shuffle: output phase
    (a, b) at input offset (u, v) uses the kernel tap `TAPS[a][u], TAPS[b][v]` (5: none)."""

    TAPS = torch.tensor([[4, 2, 0], [5, 3, 1]])

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        self.in_channels, self.out_channels = deconv.in_channels, deconv.out_channels
        self.weight, self.bias = deconv.weight, deconv.bias

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(5, 5), stride=(2, 2)"

    @staticmethod
    def fits(module: nn.Module) -> bool:
        """A 5×5, stride 2 `deconv` to at most 4 channels (the image: where it is faster)."""
        return (
            type(module) is nn.ConvTranspose2d
            and module.out_channels <= 4
            and module.bias is not None
            and (module.kernel_size, module.stride, module.padding) == ((5, 5), (2, 2), (2, 2))
            and (module.output_padding, module.dilation, module.groups) == ((1, 1), (1, 1), 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.TAPS.to(x.device)
        weight = nn.functional.pad(self.weight, (0, 1, 0, 1))[:, :, taps][:, :, :, :, taps]
        weight = weight.permute(1, 2, 4, 0, 3, 5).reshape(4 * self.out_channels, -1, 3, 3)
        phases = nn.functional.conv2d(
            x,
            weight.contiguous(memory_format=torch.channels_last),
            self.bias.repeat_interleave(4),
            padding=1,
        )
        return nn.functional.pixel_shuffle(phases, 2)


def channels_last_safe(module: nn.Module) -> bool:
    """Whether `module` and its parts are all modules known to run on channels-last."""
    if not isinstance(module, CHANNELS_LAST_SAFE):
        return False
    return isinstance(module, SAFE_AS_A_WHOLE) or all(map(channels_last_safe, module.children()))


def _to_channels_last(_module: nn.Module, inputs: tuple) -> tuple:
    return tuple(x.contiguous(memory_format=torch.channels_last) for x in inputs)


def _to_contiguous(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous()


def _replace_layers(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is GDN:  # not GDN1, whose function differs
            setattr(module, name, BlockedGDN(child))
        elif SubpixelDeconv.fits(child):
            setattr(module, name, SubpixelDeconv(child))
        else:
            _replace_layers(child)


def speed_up_transforms(model: nn.Module) -> list[str]:
    """Run `model`'s convolutional `g_a`/`g_s` channels-last with blocked GDNs and a
    sub-pixel image layer, in place; returns the names of the transforms changed (none
    twice)."""
    changed = []
    for name in TRANSFORMS:
        transform = getattr(model, name, None)
        if not isinstance(transform, nn.Module) or getattr(transform, "_channels_last", False):
            continue
        if not channels_last_safe(transform):
            continue
        _replace_layers(transform)
        transform.to(memory_format=torch.channels_last)
        transform.register_forward_pre_hook(_to_channels_last)
        transform.register_forward_hook(_to_contiguous)
        transform._channels_last = True
        changed.append(name)
    return changed
