"""Dask distributed clusters: a LocalCluster by default, or an existing scheduler by address.

With `gpus`, the local cluster has one worker process per GPU, each seeing only its own GPU
(`CUDA_VISIBLE_DEVICES`) and running one task at a time, so each holds one model on one GPU.
For GPUs on several machines, start the workers there (e.g. `dask-cuda-worker`, one per GPU)
and pass their scheduler's address; one that does not answer within `CONNECT_TIMEOUT_S` is an
error naming the setting that gave it.

Local workers start without dask's `MALLOC_TRIM_THRESHOLD_` (unless the environment sets it):
fixing that glibc threshold also fixes its mmap threshold, so every tensor above 128 KiB is
mapped and zeroed afresh, which made a learned codec's encoding 15 % slower per image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, get_worker

from icmflow.core.errors import IcmflowError

log = logging.getLogger(__name__)
logging.getLogger("distributed").setLevel(logging.WARNING)  # its import set it to INFO

CONNECT_TIMEOUT_S = 10
"""How long a scheduler given by address has to answer."""


def _gpu_cluster(gpus: Sequence[str]) -> SpecCluster:
    def worker(gpu: str) -> dict:
        options = {
            "nthreads": 1,
            "host": "127.0.0.1",
            "env": {"CUDA_VISIBLE_DEVICES": gpu},
            "silence_logs": logging.WARNING,
        }
        return {"cls": Nanny, "options": options}

    return SpecCluster(
        scheduler={
            "cls": Scheduler,
            "options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        },
        workers={f"gpu-{gpu}": worker(gpu) for gpu in gpus},
        silence_logs=logging.WARNING,
    )


@contextmanager
def dask_client(
    scheduler: str | None,
    *,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    gpus: Sequence[str] = (),
    tasks: int | None = None,
    setting: str = "scheduler",
) -> Iterator[Client | None]:
    """A client of the cluster at `scheduler` (the value of the param `setting`, which errors
    name), or of a new local cluster of worker processes.

    The local cluster has `n_workers` CPU workers, or one worker per entry of `gpus`
    (CUDA_VISIBLE_DEVICES values) when that is not empty. With no scheduler and at most one of
    `tasks` to run, there is no cluster (None): starting one would cost more than the task.
    """
    if not scheduler and tasks is not None and tasks <= 1:
        yield None
        return
    if scheduler:
        log.info("joining the dask cluster at %s", scheduler)
        with _join(scheduler, setting) as client:
            yield client
        return
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        if gpus:
            log.info("local dask cluster: one worker per GPU (%s)", ", ".join(gpus))
            cluster = _gpu_cluster(gpus)
        else:
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.WARNING,
            )
    with cluster, Client(cluster) as client:
        yield client


def _join(scheduler: str, setting: str) -> Client:
    """A client of the scheduler at `scheduler`, or an error naming `setting` within
    `CONNECT_TIMEOUT_S`."""
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except Exception as err:  # a bad address, a refusal, a timeout, or no dask there
        raise IcmflowError(
            f"{setting}: no dask scheduler answered at {scheduler} within {CONNECT_TIMEOUT_S} s "
            f"({type(err).__name__}: {err}); start one there (`dask scheduler`), fix the address, "
            f"or set {setting}: null for a local cluster"
        ) from None


def worker_threads() -> int | None:
    """The thread count of the dask worker running this code, or None outside a worker."""
    try:
        return get_worker().state.nthreads
    except ValueError:
        return None
