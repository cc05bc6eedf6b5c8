"""What makes a learned bitstream decode to the same image everywhere it decodes at all.

The entropy parameters (the scales whose indexes select the rANS tables, and in
channel-conditional models every later slice's parameters) come from floating-point
convolutions. Their results depend on how a reduction is split across threads: the same
bitstream decoded with 1 and with 2 torch threads gave pixels differing by one level, and a
scale index that flips makes the rANS decoder desync and return a wrong image without any error.

Two measures:

- `fixed_numerics`: encoding and decoding always run the networks under the same settings, one
  torch thread on CPUs (work is parallel across images instead: dask workers) and deterministic,
  non-benchmarked cuDNN kernels on GPUs. The process's own thread setting no longer matters.
- `IndexRecorder`: a CRC-32 of every scale index the Gaussian conditionals compute. The
  encoder stores it in the bitstream; the decoder compares its own, so a desync (another
  checkpoint, another machine's arithmetic) is an error naming the file, never a silent image.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch
from compressai.entropy_models import GaussianConditional
from torch import nn


@contextmanager
def fixed_numerics(device: torch.device) -> Iterator[None]:
    """Run the block with numerics that do not depend on the process's settings."""
    if device.type == "cuda":
        saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pixel_check(rgb: np.ndarray) -> int:
    """CRC-32 of H×W×3 uint8 pixels and their size."""
    header = np.asarray(rgb.shape, dtype="<u4").tobytes()
    return zlib.crc32(np.ascontiguousarray(rgb).tobytes(), zlib.crc32(header))


def searched_indexes(conditional: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """`GaussianConditional.build_indexes` as one sorted search, 2.4× faster than its loop over
    the table: the same integers, the count of table scales (the last aside) below each scale."""
    scales = conditional.lower_bound_scale(scales).contiguous()
    return torch.searchsorted(conditional.scale_table[:-1], scales).int()


class IndexRecorder:
    """CRC-32 of the scale indexes a model's Gaussian conditionals compute, in call order.

    Every CompressAI latent model, and icmflow's, turns scales into table indexes with
    `GaussianConditional.build_indexes` before coding, whether through the entropy model's
    `compress` or with the rANS coder directly, so its results are what is recorded while the
    recorder watches a model (`with recorder.watching(model)`); CompressAI's own
    `build_indexes` is computed by `searched_indexes` meanwhile. Entropy bottlenecks (the
    hyper-latents' factorised priors) use fixed per-channel indexes and need no check.
    """

    def __init__(self) -> None:
        self.value = 0

    def _record(self, build_indexes: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def recorded(*args: Any, **kwargs: Any) -> torch.Tensor:
            indexes = build_indexes(*args, **kwargs)
            values = indexes.detach().to(device="cpu", dtype=torch.int32).contiguous().numpy()
            self.value = zlib.crc32(values.tobytes(), self.value)
            return indexes

        return recorded

    @contextmanager
    def watching(self, model: nn.Module) -> Iterator[IndexRecorder]:
        watched = [m for m in model.modules() if isinstance(m, GaussianConditional)]
        for module in watched:  # an instance attribute shadows the class's method
            build = module.build_indexes
            if type(module).build_indexes is GaussianConditional.build_indexes:
                build = partial(searched_indexes, module)
            module.build_indexes = self._record(build)
        try:
            yield self
        finally:
            for module in watched:
                del module.build_indexes
