"""TCM (icmflow/codecs/tcm.py): registration, the paper's sizes, any image size, real coding."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from compressai.registry import MODELS

from icmflow.codecs.architectures import create_model, image_architectures, model_args_problem
from icmflow.codecs.tcm import TCM, WindowAttention
from icmflow.coding.learned import LearnedCodec
from tests.helpers.builders import save_codec
from tests.helpers.codecs import TCM_TINY, learned_spec, textured_image, tiny_codec, to_batch
from tests.helpers.golden import golden_mismatch

GAIN = 10.0
"""Scales g_a's last layer so that random weights give latents worth coding (~1 kB a slice)."""

REFERENCE_PARAMETERS = {64: 45_180_752, 128: 76_568_148}
"""The reference's counts with its default config (published: 45.2 M and 76.6 M)."""


@pytest.fixture(scope="module")
def codec() -> TCM:
    return tiny_codec("tcm", seed=0, gain=GAIN, **TCM_TINY)


def test_registered_and_built_by_icmflow():
    assert MODELS["tcm"] is TCM
    assert "tcm" in image_architectures()
    assert model_args_problem("tcm", TCM_TINY) is None
    assert "takes no argument window" in model_args_problem("tcm", {"window": 4})
    assert isinstance(create_model("tcm", seed=0, **TCM_TINY), TCM)
    with pytest.raises(ValueError, match="multiple of num_slices"):
        create_model("tcm", **(TCM_TINY | {"M": 66}))


@pytest.mark.parametrize("N", [64, 128])
def test_parameter_counts_of_the_paper(N):
    model = TCM(N=N)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMETERS[N]
    if N == 64:  # a plain state dict (as the reference's checkpoints) rebuilds the model
        state = model.state_dict()
        rebuilt = TCM.from_state_dict(state).state_dict()
        assert rebuilt.keys() == state.keys()
        assert all(torch.equal(rebuilt[k], state[k]) for k in state)


def test_forward_on_an_odd_size_and_gradients():
    model = create_model("tcm", seed=0, **TCM_TINY).train()
    x = torch.rand(1, 3, 70, 45)
    out = model(x)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (1, 64, 8, 4)  # padded to 128×64, /16
    assert out["likelihoods"]["z"].shape == (1, 32, 2, 1)
    bpp = sum(lk.log2().sum() for lk in out["likelihoods"].values()) / -x[0, 0].numel()
    (torch.nn.functional.mse_loss(out["x_hat"], x) + 0.01 * bpp).backward()
    model.aux_loss().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["g_a.1.trans_block.msa.relative_position_params"].abs().sum() > 0
    assert grads["atten_mean.3.0.non_local_block.block_2.msa.embedding_layer.weight"].any()


def test_window_attention_masks_its_padding():
    """A 4×4 map under 8×8 windows is padded to one window whose padding is masked: the same
    as 4×4 windows (no padding) with the matching relative position biases."""
    torch.manual_seed(0)
    padded, exact = WindowAttention(16, 8, 8, False), WindowAttention(16, 8, 4, False)
    exact.embedding_layer.load_state_dict(padded.embedding_layer.state_dict())
    exact.linear.load_state_dict(padded.linear.state_dict())
    with torch.no_grad():  # offsets -3..3 of a 4-window sit at 4..10 of an 8-window's table
        exact.relative_position_params.copy_(padded.relative_position_params[:, 4:11, 4:11])
        x = torch.randn(2, 4, 4, 16)
        torch.testing.assert_close(padded(x), exact(x))


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (100, 130)])
@torch.no_grad()
def test_round_trip_is_the_eval_reconstruction(codec, size):
    """In eval mode forward quantises y and z as compress does (rounding around the means,
    `ste_round` is exact), so decoding gives forward's x̂ exactly, clamped to [0, 1]."""
    x = to_batch(textured_image(*size))
    coded = codec.compress(x)
    assert len(coded["strings"]) == TCM_TINY["num_slices"] + 1
    assert all(len(per_latent) == 1 for per_latent in coded["strings"])
    x_hat = codec.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert x_hat.shape == x.shape
    assert torch.equal(x_hat, codec(x)["x_hat"].clamp(0, 1))
    assert codec.compress(x)["strings"] == coded["strings"]


@torch.no_grad()
def test_a_batch_codes_each_image(codec):
    x = torch.cat([to_batch(textured_image(48, 40, seed=s)) for s in range(2)])
    coded = codec.compress(x)
    assert all(len(per_latent) == 2 for per_latent in coded["strings"])
    x_hat = codec.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert torch.equal(x_hat, codec(x)["x_hat"].clamp(0, 1))


def test_bitstream_golden(codec):
    coded = LearnedCodec(codec).encode(textured_image(64, 96))
    found = {
        "tcm bitstream": hashlib.md5(coded.data).hexdigest(),
        "tcm decoded": hashlib.md5(coded.decoded.tobytes()).hexdigest(),
        "tcm bytes": len(coded.data),
    }
    assert not (mismatch := golden_mismatch("tcm", found)), mismatch


def test_codes_through_a_checkpoint(codec, tmp_path):
    checkpoint = save_codec(codec, tmp_path / "tcm.pth.tar", TCM_TINY, arch="tcm")
    learned = learned_spec(checkpoint).build()
    rgb = textured_image(50, 70)
    coded = learned.encode(rgb)
    decoded = learned.decode(coded.data)
    assert decoded.shape == rgb.shape
    assert np.array_equal(decoded, coded.decoded)
