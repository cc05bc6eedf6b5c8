"""Training on several processes with torchrun: the launch command and each process's group.

`icmflow train` with `train.nproc` > 1 runs itself again under `python -m torch.distributed.run
--standalone --nproc-per-node <n>` (what `torchrun` is; ultralytics' `generate_ddp_command` does
the same), so DVC runs one unchanged command. Under torchrun (`RANK`, `WORLD_SIZE` and
`LOCAL_RANK` set, also when a user runs torchrun across several machines) no new launch happens:
each process joins the group, NCCL on CUDA, gloo on CPU, and takes GPU `LOCAL_RANK`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from icmflow.core.errors import IcmflowError

log = logging.getLogger(__name__)


def launched() -> bool:
    """True inside a process that torchrun (or another launcher) started with a world size."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch_rank() -> int:
    """This process's global rank as its launcher set it (0 without a launcher)."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run` of `python -m icmflow <args>` on `nproc` local processes.

    `--standalone` picks a free port on this machine for the group's rendezvous.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "icmflow",
        *args,
    ]


def run_torchrun(nproc: int, args: Sequence[str]) -> int:
    """Run `icmflow <args>` on `nproc` processes; the exit status of torchrun.

    Each process gets an equal share of this machine's cores as threads, unless
    `OMP_NUM_THREADS` says otherwise.
    """
    command = torchrun_command(nproc, args)
    log.info("training on %d processes: %s", nproc, " ".join(command))
    threads = max(1, len(os.sched_getaffinity(0)) // nproc)
    process = subprocess.Popen(command, env={"OMP_NUM_THREADS": str(threads), **os.environ})
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached torchrun too: it stops its processes itself
        process.wait()
        raise


@dataclass(frozen=True)
class Group:
    """This process's place in the training group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes logs, state and outputs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def local_device(device: torch.device, local_rank: int, visible: int | None = None) -> torch.device:
    """This process's device: GPU `local_rank` on CUDA (of `visible` GPUs: all CUDA sees)."""
    if device.type != "cuda":
        return device
    visible = torch.cuda.device_count() if visible is None else visible
    if local_rank >= visible:
        raise IcmflowError(
            f"training process {local_rank} has no GPU: {visible} visible; set train.nproc "
            f"to at most {visible} (or CUDA_VISIBLE_DEVICES to more GPUs)"
        )
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(device: torch.device) -> Iterator[Group]:
    """Join the torchrun group (or be alone without it) on `device`; leave it at the end.

    Under torchrun a CUDA device becomes this process's GPU, `cuda:<LOCAL_RANK>`.
    """
    if not launched():
        yield Group(device=device)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = local_device(device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    group = Group(dist.get_rank(), dist.get_world_size(), device)
    log.info("process %d of %d on %s", group.rank, group.world, device)
    try:
        yield group
    finally:
        dist.destroy_process_group()
