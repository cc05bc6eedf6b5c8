"""Scalable coding for humans and machines with a feature fusion network (Shindo, Watanabe,
Tatsumi and Watanabe; `../shared/papers/scalable-coding-feature-fusion-sa-icm.md`).

Two layers. The **machine layer** is a trained channel-sliced codec (TCM, e.g. one trained with
the `object` or `edge` objective, as SA-ICM), loaded from its checkpoint and frozen: no
gradients (`requires_grad` False), always in eval mode (dropout and batch-norm statistics
fixed, whatever `train()` is called with). Its bitstream decodes alone to the machines' image.
The **human layer** adds what people need:

- `mode: fusion` (the paper's method): the additional-information codec, a TCM whose latent ŷa
  has `m ≤ n` slices of the machine's slice width (`m`·M/n channels, its own hyperprior and
  channel-conditional entropy model over m slices) and whose synthesis transform takes the
  machine's M channels: it decodes the fused latent ŷf_k = ŷ_k + ŷa_k for k ≤ m and
  ŷf_k = ŷ_k for k > m (eqs. 6-7), ŷ the machine's quantised latent as its own decoder sees it
  (after latent residual prediction). Smaller m: fewer channels and parameters (Table I).
- `mode: dc` (the paper's DC-model baseline): a plain registered codec on the difference between
  the original and the machine layer's decoded image, coded as (x - x̃ + 1)/2 in [0, 1]; the
  human image is x̃ + 2·r̂ - 1.

**What the fusion human layer's encoder sees: the original image x only.** The paper's Fig. 3
and eq. 3 feed x to the additional-information model, and its authors' code
(github.com/final-0/ICM-v1, `models2/ica.py`: `ICA.forward(x, yy)` runs `g_a(x)` and uses the
machine latent `yy` only in the fusion before `g_s`) does the same. The machine latent reaches
only the decoder, which has it anyway; the encoder learns what to add because training
backpropagates the fused reconstruction's error through g_s into g_a, and it needs neither the
machine's decode nor the machine model at encoding time. (The DC model's encoder, by its
definition, sees the residual x - x̃.)

Both modes train with `L = R(ya) + R(za) + λ·255²·MSE(x, x̂)` (objective `scalable`), x̂ the
human image; the machine layer's quantisation is compress()'s (rounding around the means), so
training sees the latent the bitstream carries. The human layer is saved alone in a CompressAI
checkpoint (`save_checkpoint`), with the SHA-256 of the machine checkpoint it was trained on.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from compressai.layers import ResidualBlockUpsample
from compressai.models import CompressionModel
from torch import Tensor, nn

from icmflow.codecs.architectures import architecture, create_model, model_args_problem
from icmflow.codecs.checkpoint import load_codec, read_checkpoint, save_checkpoint
from icmflow.codecs.tcm import TCM, _pad
from icmflow.core.errors import CheckpointError
from icmflow.core.resume import file_digest

Mode = Literal["fusion", "dc"]
ADDITIONAL = "tcm-additional"
"""The name the fusion human layer's checkpoints give as their architecture."""
DERIVED = ("M", "num_slices", "m", "slice_channels", "fused_channels")
"""Arguments of the additional-information codec that follow from the machine layer and m."""


def is_channel_sliced(arch: str) -> bool:
    """Whether architecture `arch` has TCM's channel-sliced latent (n equal slices of ŷ decoded
    one after the other by `_decode_slices`), which the fusion reads slice by slice."""
    return issubclass(architecture(arch), TCM)


def slice_count(arch: str, model_args: dict[str, Any]) -> int:
    """num_slices of a channel-sliced architecture built with `model_args`."""
    bound = inspect.signature(architecture(arch)).bind_partial(**model_args)
    bound.apply_defaults()
    return int(bound.arguments["num_slices"])


class AdditionalInformationCodec(TCM):
    """The fusion human layer: a TCM with `m` slices of `slice_channels` channels whose g_s
    decodes the fused latent of `fused_channels` (the machine's M) channels. Other keyword
    arguments are TCM's (N, config, head_dim, max_support_slices, z_channels, ...)."""

    def __init__(self, m: int, slice_channels: int, fused_channels: int, **tcm_args: Any):
        if m * slice_channels > fused_channels:
            raise ValueError(
                f"m={m} slices of {slice_channels} channels exceed the machine latent's "
                f"{fused_channels}: m must be at most its num_slices"
            )
        super().__init__(M=m * slice_channels, num_slices=m, **tcm_args)
        self.m, self.fused_channels = m, fused_channels
        self.g_s[0] = ResidualBlockUpsample(fused_channels, self.g_s[0].conv.in_channels, 2)

    def fuse(self, y_machine: Tensor, y_additional: Tensor) -> Tensor:
        """Eqs. 6-7: ŷa added to the first m slices of ŷ, the other slices as they are."""
        channels = y_additional.shape[1]
        return torch.cat((y_machine[:, :channels] + y_additional, y_machine[:, channels:]), 1)

    def forward(self, x: Tensor, y_machine: Tensor) -> dict[str, Any]:  # type: ignore[override]
        y_additional, likelihoods = self.quantised_latent(x)
        x_hat = self.g_s(self.fuse(y_machine, y_additional))
        return {"x_hat": x_hat[..., : x.shape[-2], : x.shape[-1]], "likelihoods": likelihoods}

    def decompress_fused(
        self, strings: Sequence[Sequence[bytes]], shape: Sequence[int], y_machine: Tensor
    ) -> Tensor:
        """The human image (padded size, clamped) from this layer's strings and ŷ."""
        y_additional = self.latent_from_strings(strings, shape)
        return self.g_s(self.fuse(y_machine, y_additional)).clamp_(0, 1)


def _to_8_bits(x: Tensor) -> Tensor:
    """What an 8-bit decoded image holds: clamped to [0, 1], rounded to 1/255."""
    return x.clamp(0, 1).mul(255).round().div(255)


class ScalableCodec(nn.Module):
    """A frozen machine layer and a trainable human layer (module doc). `forward(x)` returns
    the human image `x_hat`, the human layer's `likelihoods` (what the rate counts) and the
    machine layer's `machine_likelihoods` and `machine_x_hat`; `aux_loss` and `update` are the
    human layer's, as the trainer and checkpoints need."""

    def __init__(
        self,
        machine: TCM,
        human: CompressionModel,
        mode: Mode,
        *,
        human_arch: str,
        human_args: dict[str, Any],
    ):
        super().__init__()
        if not isinstance(machine, TCM):
            raise TypeError(f"the machine layer must be channel-sliced (TCM), not {machine}")
        if mode == "fusion" and not isinstance(human, AdditionalInformationCodec):
            raise TypeError("mode fusion needs an AdditionalInformationCodec human layer")
        self.machine, self.human, self.mode = machine, human, mode
        self.human_arch, self.human_args = human_arch, human_args
        self.machine.requires_grad_(False)
        self.machine.eval()

    def train(self, mode: bool = True) -> ScalableCodec:
        super().train(mode)
        self.machine.eval()  # frozen: dropout off, batch-norm statistics fixed
        return self

    def _machine(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """ŷ, the 8-bit machine image x̃ (padded size) and the machine likelihoods."""
        with torch.no_grad():
            y_hat, likelihoods = self.machine.quantised_latent(x)
            return y_hat, _to_8_bits(self.machine.g_s(y_hat)), likelihoods

    def forward(self, x: Tensor) -> dict[str, Any]:
        """Any image size: padded as the codecs pad (`tcm._pad`), outputs cropped back."""
        height, width = x.shape[-2:]
        y_hat, x_machine, machine_likelihoods = self._machine(x)
        if self.mode == "fusion":
            out = self.human(x, y_hat)
        else:
            residual = self.human((_pad(x) - x_machine + 1) / 2)
            x_hat = (x_machine + 2 * residual["x_hat"] - 1)[..., :height, :width]
            out = {**residual, "x_hat": x_hat}
        return {
            **out,
            "machine_likelihoods": machine_likelihoods,
            "machine_x_hat": x_machine[..., :height, :width],
        }

    def compress_additional(
        self, x: Tensor, machine_strings: Sequence[Sequence[bytes]], machine_shape: Sequence[int]
    ) -> dict[str, Any]:
        """The human layer's strings for x (padded to the machine's multiple), given the
        machine layer's strings, decoded here as the decoder will decode them."""
        if self.mode == "fusion":  # the encoder sees x only; ŷ is decoded for the check chain
            self.machine.latent_from_strings(machine_strings, machine_shape)
            return self.human.compress(x)
        x_machine = self.decompress_machine(machine_strings, machine_shape)
        return self.human.compress((x - x_machine + 1) / 2)

    def decompress_machine(
        self, machine_strings: Sequence[Sequence[bytes]], machine_shape: Sequence[int]
    ) -> Tensor:
        y_hat = self.machine.latent_from_strings(machine_strings, machine_shape)
        return _to_8_bits(self.machine.g_s(y_hat))

    def decompress_human(
        self,
        machine_strings: Sequence[Sequence[bytes]],
        machine_shape: Sequence[int],
        strings: Sequence[Sequence[bytes]],
        shape: Sequence[int],
    ) -> Tensor:
        """The human image (padded size, in [0, 1]) from both layers' strings."""
        if self.mode == "fusion":
            y_hat = self.machine.latent_from_strings(machine_strings, machine_shape)
            return self.human.decompress_fused(strings, shape, y_hat)
        x_machine = self.decompress_machine(machine_strings, machine_shape)
        residual = self.human.decompress(strings, shape)["x_hat"]
        return (x_machine + 2 * residual - 1).clamp_(0, 1)

    def aux_loss(self) -> Tensor:
        return self.human.aux_loss()

    def update(self, scale_table: Tensor | None = None, force: bool = False) -> bool:
        return self.human.update(scale_table, force=force)

    def human_parameters(self) -> int:
        return sum(p.numel() for p in self.human.parameters())


def human_layer_args(
    mode: Mode, m: int | None, machine: TCM, model_args: dict[str, Any]
) -> dict[str, Any]:
    """The human layer's constructor arguments: fusion derives m, the slice width and the fused
    width from the machine layer."""
    if mode == "dc":
        return dict(model_args)
    width, num_slices = machine.cc_mean_transforms[0][-1].out_channels, machine.num_slices
    if m is None or not 1 <= m <= num_slices:
        raise ValueError(f"m={m}: the fusion adds to 1 to num_slices={num_slices} slices")
    return {**model_args, "m": m, "slice_channels": width, "fused_channels": width * num_slices}


def human_layer_problem(
    mode: Mode, arch: str | None, m: int | None, num_slices: int, model_args: dict
) -> str | None:
    """Why these human-layer settings cannot be built on a machine layer of `num_slices`
    slices, without building anything."""
    if mode == "dc":
        return model_args_problem(arch or "", model_args)
    if derived := sorted(set(model_args) & set(DERIVED)):
        return f"model_args {', '.join(derived)} follow from the machine layer and m: remove them"
    if m is None or m > num_slices:
        return f"m={m} is more than the machine layer's num_slices={num_slices}"
    accepted = set(inspect.signature(TCM).parameters) - set(DERIVED)
    if unknown := sorted(set(model_args) - accepted):
        return f"the additional-information codec (TCM) takes no {', '.join(unknown)}"
    return None


def build_scalable(
    machine: TCM,
    mode: Mode,
    m: int | None,
    arch: str | None,
    model_args: dict[str, Any],
    *,
    seed: int | None = None,
) -> ScalableCodec:
    """A new, randomly initialised human layer on `machine`."""
    args = human_layer_args(mode, m, machine, model_args)
    if seed is not None:
        torch.manual_seed(seed)
    human_arch = ADDITIONAL if mode == "fusion" else arch or ""
    return ScalableCodec(
        machine, _human_layer(human_arch, args), mode, human_arch=human_arch, human_args=args
    )


def _human_layer(arch: str, args: dict[str, Any]) -> CompressionModel:
    return AdditionalInformationCodec(**args) if arch == ADDITIONAL else create_model(arch, **args)


def save_scalable(
    path: Path, model: ScalableCodec, machine_checkpoint: Path, **fields: Any
) -> None:
    """Save the human layer alone (after `update(force=True)`) in CompressAI's layout, with
    the SHA-256 of its machine layer's checkpoint; `fields` as `save_checkpoint`'s."""
    extra = fields.pop("extra", {})
    save_checkpoint(
        path,
        model.human,
        arch=model.human_arch,
        model_args=model.human_args,
        extra={
            **extra,
            "scalable": {"mode": model.mode, "machine_sha256": file_digest(machine_checkpoint)},
            "human_parameters": model.human_parameters(),
        },
        **fields,
    )


def load_scalable(human_checkpoint: Path, machine_checkpoint: Path) -> ScalableCodec:
    """A trained scalable codec, ready to code, from both layers' checkpoints."""
    record = read_checkpoint(human_checkpoint)
    meta = record.get("icmflow", {})
    if "scalable" not in meta:
        raise CheckpointError(f"{human_checkpoint}: not a scalable codec's human layer")
    if meta["scalable"]["machine_sha256"] != file_digest(machine_checkpoint):
        raise CheckpointError(
            f"{human_checkpoint}: trained on another machine layer than {machine_checkpoint}; "
            "train the scalable codec again"
        )
    machine = load_codec(machine_checkpoint)
    if not isinstance(machine, TCM):
        raise CheckpointError(f"{machine_checkpoint}: not a channel-sliced (TCM) codec")
    human = _human_layer(meta["arch"], meta["model_args"])
    try:
        human.load_state_dict(record["state_dict"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{human_checkpoint}: weights do not fit ({err})") from None
    mode = meta["scalable"]["mode"]
    return ScalableCodec(
        machine, human, mode, human_arch=meta["arch"], human_args=meta["model_args"]
    ).eval()
