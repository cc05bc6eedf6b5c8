"""Processes of a training group started by the DDP tests, and what they record."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from compressai.entropy_models import EntropyModel
from torch.utils.data import Dataset

from icmflow.codecs.architectures import create_model
from icmflow.runtime.distributed import process_group
from icmflow.training.objectives import Objective, rate_bpp
from icmflow.training.trainer import TrainSettings, train_codec

ORIGINAL_QUANTIZE = EntropyModel.quantize
WRITES = ("open", "os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree")


def value_noise(self, inputs, mode, means=None):
    """Training "noise" that is a function of each value alone, not of torch's generator: the
    same sample gets the same noise in any batch and on any process."""
    if mode == "noise":
        return inputs + 0.4 * torch.sin(7.0 * inputs.detach())
    return ORIGINAL_QUANTIZE(self, inputs, mode, means)


@contextmanager
def deterministic_noise():
    EntropyModel.quantize = value_noise
    try:
        yield
    finally:
        EntropyModel.quantize = ORIGINAL_QUANTIZE
    assert EntropyModel.quantize is ORIGINAL_QUANTIZE


def record_writes(root: Path) -> list[str]:
    """From now on, every file or folder under `root` this process writes, renames to, makes or
    removes (Python's audit events), appended to the returned list."""
    written: list[str] = []
    prefix = str(root.resolve())

    def hook(event: str, args: tuple) -> None:
        if event not in WRITES:
            return
        if event == "open":
            path, mode = args[0], args[1]
            if not isinstance(mode, str) or not set(mode) & set("wax+"):
                return
        else:
            path = args[1] if event == "os.rename" else args[0]
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(prefix):
            written.append(f"{event} {os.path.relpath(os.path.abspath(path), prefix)}")

    sys.addaudithook(hook)
    return written


def train_process(rank: int, world: int, port: int, project: str, codec: str) -> None:
    """One process of a `world`-process group running the train stage in `project`."""
    from icmflow.pipeline.params import load_params
    from icmflow.pipeline.paths import Paths
    from icmflow.stages import train

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    os.chdir(project)
    params = load_params("params.yaml")
    written = record_writes(Path(project))
    with deterministic_noise():
        train.run(params, Paths(), codec)
    record = list(written)
    assert params.training(codec).nproc == world, "the params do not train on this group"
    if rank == 0:  # the one writer: its outputs are there when it returns
        assert Paths().checkpoint(codec).is_file() and Paths().train_log(codec).is_file()
    Path(project, f"writes-{rank}.json").write_text(json.dumps(record))


class RateFirst(Objective):
    """`mse`, but the first step's loss is the rate alone: the decoder gets no gradient then."""

    partial_steps = True

    def __init__(self, lmbda: float):
        super().__init__(lmbda)
        self.rate_only = False

    def begin_step(self, step: int, steps: int) -> None:
        self.rate_only = step == 1

    def forward(self, output: dict, batch: dict) -> dict[str, torch.Tensor]:
        x = batch["x"]
        bpp, mse = rate_bpp(output, x), torch.mean((output["x_hat"] - x) ** 2)
        loss = bpp if self.rate_only else bpp + self.lmbda * 255**2 * mse
        return {"loss": loss, "bpp": bpp, "mse": mse}


class Noise(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(index))}


def partial_steps_process(rank: int, world: int, port: int, out: str) -> None:
    """One process of a group training a tiny codec with `RateFirst`."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    with process_group(torch.device("cpu")) as group:
        train_codec(
            create_model("bmshj2018-hyperprior", seed=0, N=8, M=8),
            RateFirst(lmbda=0.01),
            Noise(),
            TrainSettings(steps=3, batch_size=2, lr=1e-3, aux_lr=1e-3),
            log_path=Path(out) / "log.csv",
            group=group,
        )
