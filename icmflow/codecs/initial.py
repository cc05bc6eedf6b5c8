"""Initial weights of a codec: another codec's checkpoint, any CompressAI-layout file, or a file
of CompressAI's zoo that the user put in the torch hub cache (nothing is ever downloaded).

Files are read weights-only (`torch.load(..., weights_only=True)`: tensors and plain containers,
no code runs), their keys renamed as CompressAI's zoo loads its files (`compressai.zoo.
load_state_dict`: `module.` prefixes, old entropy-bottleneck and `downsample` names), and loaded
through the model's own `load_state_dict`, which renames older entropy-bottleneck keys and
resizes the entropy coder's tables.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.models import CompressionModel
from compressai.models.utils import remap_old_keys
from compressai.zoo import load_state_dict as zoo_renamed
from compressai.zoo.image import cfgs, model_urls

from icmflow.codecs.architectures import architecture
from icmflow.codecs.checkpoint import state_dict_of
from icmflow.core.errors import CheckpointError

RESIZED = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
"""Entropy-coder buffers whose size follows the file (`load_state_dict` resizes them)."""

Weights = dict[str, torch.Tensor]


def zoo_file(arch: str, quality: int, metric: str) -> tuple[Path, str]:
    """Where `torch.hub` keeps the zoo's file of `arch` at `quality`, and the URL it comes from.

    ValueError when the zoo has no such model."""
    if arch not in model_urls:
        raise ValueError(f"CompressAI's zoo has no {arch!r} (it has {', '.join(model_urls)})")
    urls = model_urls[arch].get(metric, {})
    if quality not in urls:
        raise ValueError(
            f"CompressAI's zoo has no {arch} {metric} quality {quality} "
            f"(qualities {min(urls)} to {max(urls)})"
        )
    url = urls[quality]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1], url


def zoo_model_args(arch: str, quality: int) -> dict[str, int]:
    """The constructor arguments of the zoo's `arch` at `quality` (its `cfgs`, named)."""
    names = list(inspect.signature(architecture(arch)).parameters)
    return dict(zip(names, cfgs[arch][quality], strict=False))


def read_weights(path: Path) -> Weights:
    """The model tensors of a checkpoint (CompressAI's layout or a plain state dict), read
    weights-only, keys renamed as CompressAI's zoo renames them."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: initial weights not found")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for files that are no checkpoint
        raise CheckpointError(
            f"{path}: not a checkpoint of tensors that loads weights-only "
            f"({type(err).__name__}); save the model's state_dict with torch.save"
        ) from None
    weights = state_dict_of(record) if isinstance(record, dict) else None
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise CheckpointError(f"{path}: holds no state dict (a dict of tensors)")
    return zoo_renamed(weights)


def fit_problem(model: CompressionModel, weights: Weights) -> str | None:
    """Why `weights` do not load into `model` (None: they do): keys it lacks or does not have,
    tensors of other shapes (the entropy coder's tables excepted: they are resized)."""
    for name, module in model.named_modules():
        if isinstance(module, EntropyBottleneck):
            weights = remap_old_keys(name, weights)
    own = model.state_dict()
    parts = []
    for what, keys in (
        ("missing", [k for k in own if k not in weights]),
        ("unexpected", [k for k in weights if k not in own]),
        (
            "of other shapes",
            [
                f"{k} {tuple(weights[k].shape)}, not {tuple(v.shape)}"
                for k, v in own.items()
                if k in weights and not k.endswith(RESIZED) and weights[k].shape != v.shape
            ],
        ),
    ):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            parts.append(f"{len(keys)} tensors {what} ({shown})")
    return "; ".join(parts) or None


def load_initial(model: CompressionModel, weights: Weights) -> CompressionModel:
    """`model` with `weights` loaded through CompressAI's `load_state_dict`; CheckpointError
    (naming the tensors) when they do not fit."""
    problem = fit_problem(model, weights)
    if problem:
        raise CheckpointError(f"the initial weights do not fit the model: {problem}")
    model.load_state_dict(weights)
    return model
