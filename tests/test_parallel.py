import os

from icmflow.runtime.cluster import dask_client, worker_threads


def _visible_gpus() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_gpu_cluster_has_one_single_threaded_worker_per_gpu():
    with dask_client(None, gpus=["3", "5"]) as client:
        assert sorted(client.run(_visible_gpus).values()) == ["3", "5"]
        assert client.submit(worker_threads).result() == 1
    assert worker_threads() is None  # not in a dask worker
