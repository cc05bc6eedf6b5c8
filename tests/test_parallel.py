import os

import pytest

from icmflow.runtime.cluster import dask_client, worker_threads


def _visible_gpus() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _malloc_trim() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_gpu_cluster_has_one_single_threaded_worker_per_gpu(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask_client(None, gpus=["3", "5"]) as client:
        assert sorted(client.run(_visible_gpus).values()) == ["3", "5"]
        assert client.submit(worker_threads).result() == 1
        assert set(client.run(_malloc_trim).values()) == {None}
    assert worker_threads() is None  # not in a dask worker


@pytest.mark.parametrize("environment", [None, "131072"])
def test_local_workers_keep_glibc_s_dynamic_mmap_threshold(environment, monkeypatch):
    """dask would set MALLOC_TRIM_THRESHOLD_ (and so fix the mmap threshold) in every worker;
    icmflow's local workers go without, unless the user's environment sets it."""
    if environment is None:
        monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    else:
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", environment)
    with dask_client(None, n_workers=1) as client:
        assert set(client.run(_malloc_trim).values()) == {environment}
