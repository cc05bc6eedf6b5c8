"""Dask distributed clusters: a LocalCluster by default, or an existing scheduler by address."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

log = logging.getLogger(__name__)


@contextmanager
def dask_client(
    scheduler: str | None, *, n_workers: int = 2, threads_per_worker: int = 1
) -> Iterator[Client]:
    """A client of the cluster at `scheduler`, or of a new LocalCluster of worker processes."""
    if scheduler:
        log.info("joining the dask cluster at %s", scheduler)
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
