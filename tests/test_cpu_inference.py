"""The CPU coding path (`icmflow.codecs.cpu_inference`, `searched_indexes`) computes what the
plain CompressAI modules compute, and leaves checkpoints as they were."""

from __future__ import annotations

import pytest
import torch
from compressai.layers import GDN
from compressai.models import MeanScaleHyperprior
from torch import nn

from icmflow.codecs.architectures import create_model
from icmflow.codecs.cpu_inference import BlockedGDN, SubpixelDeconv, speed_up_transforms
from icmflow.coding.reproducible import IndexRecorder, searched_indexes
from tests.helpers.codecs import TCM_TINY, tiny_codec

CONVOLUTIONAL = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018"]


@pytest.mark.parametrize("arch", [*CONVOLUTIONAL, "cheng2020-anchor", "cheng2020-attn"])
@torch.no_grad()
def test_sped_up_transforms_compute_the_same_and_keep_the_state_dict(arch):
    args = {"N": 32, "M": 32} if arch in CONVOLUTIONAL else {"N": 32}  # cheng2020: M = N
    model = create_model(arch, seed=3, **args).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 70, 90)
    x = nn.functional.pad(x, (0, 38, 0, 58))  # 128×128, several GDN blocks at full size
    y, x_hat = model.g_a(x), model.g_s(model.g_a(x))
    assert speed_up_transforms(model) == ["g_a", "g_s"]
    assert speed_up_transforms(model) == []  # once only
    if arch in CONVOLUTIONAL:
        assert any(isinstance(m, BlockedGDN) for m in model.g_a.modules())
        assert any(isinstance(m, SubpixelDeconv) for m in model.g_s.modules())
    fast_y = model.g_a(x)
    torch.testing.assert_close(fast_y, y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.g_s(y), x_hat, rtol=1e-4, atol=1e-4)
    assert fast_y.is_contiguous()  # the entropy models see ordinary tensors
    assert ("SubpixelDeconv" in repr(model)) == (arch in CONVOLUTIONAL)  # and it prints
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_transforms_that_are_not_plain_convolutions_are_left_alone():
    model = tiny_codec("tcm", **TCM_TINY)
    assert speed_up_transforms(model) == []
    assert not any(isinstance(m, BlockedGDN) for m in model.modules())


@pytest.mark.parametrize("inverse", [False, True])
def test_blocked_gdn_equals_gdn_and_falls_back_when_training(inverse):
    gdn = GDN(24, inverse=inverse)
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand_like(gdn.gamma))
        gdn.beta.add_(0.1 * torch.rand_like(gdn.beta))
    x = torch.randn(2, 24, 33, 47).contiguous(memory_format=torch.channels_last)  # 3102 px
    blocked = BlockedGDN(gdn)
    with torch.no_grad():
        torch.testing.assert_close(blocked(x), gdn(x), rtol=1e-5, atol=1e-6)
    x.requires_grad_(True)
    blocked(x).sum().backward()  # the plain path: gradients flow
    assert x.grad is not None and blocked.gamma.grad is not None


@pytest.mark.parametrize("channels", [1, 3])
@torch.no_grad()
def test_subpixel_deconv_equals_the_transposed_convolution(channels):
    deconv = nn.ConvTranspose2d(16, channels, 5, stride=2, padding=2, output_padding=1)
    x = torch.randn(2, 16, 13, 21)
    torch.testing.assert_close(SubpixelDeconv(deconv)(x), deconv(x), rtol=1e-5, atol=1e-5)
    assert SubpixelDeconv.fits(deconv)
    assert not SubpixelDeconv.fits(nn.ConvTranspose2d(16, 16, 5, 2, 2, 1))  # slower there
    assert not SubpixelDeconv.fits(nn.ConvTranspose2d(16, 3, 3, 2, 1, 1))  # other geometry


def test_searched_indexes_are_build_indexes():
    model = MeanScaleHyperprior(8, 8)
    model.update(force=True)
    conditional = model.gaussian_conditional
    table = conditional.scale_table
    scales = torch.cat(
        [
            torch.rand(4000) * 300,
            table,  # ties: a scale equal to a table entry
            torch.nextafter(table, torch.tensor(0.0)),
            torch.nextafter(table, torch.tensor(1e9)),
            torch.tensor([0.0, 1e-9, 1e9, float("inf")]),
        ]
    ).view(2, 1, -1, 1)
    expected = conditional.build_indexes(scales)
    found = searched_indexes(conditional, scales)
    assert found.dtype == expected.dtype and torch.equal(found, expected)
    recorder = IndexRecorder()
    with recorder.watching(model):  # coding uses the search, and records what it returns
        assert torch.equal(conditional.build_indexes(scales), expected)
    assert recorder.value != 0
    assert "build_indexes" not in vars(conditional)  # the class's method again
