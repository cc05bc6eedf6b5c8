"""Processes of a training group started by the DDP tests, and what they record."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from compressai.entropy_models import EntropyModel

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
