"""Mask stores and coded datasets on a real S3 API: moto's server on 127.0.0.1, through s3fs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import coded_split, encode_dataset, read_bytes_per_image
from icmflow.core.errors import MissingInputError
from icmflow.core.storage import check_url
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.masks.build import build_object_masks, build_store
from icmflow.masks.store import IncompleteStoreError, MaskStore, pack
from icmflow.pipeline.cli import app
from icmflow.pipeline.params.sections import StorageParams
from icmflow.pipeline.paths import Paths
from icmflow.runtime.cluster import dask_client
from icmflow.training.data import TrainingCrops
from tests.helpers.project import REPO

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "icmflow-test"
JPEG = CLASSICAL["jpeg"](family="jpeg", quality=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[s3fs.S3FileSystem]:
    """A moto S3 server for this module; the AWS variables point every process at it."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_masks_and_encode_on_a_local_cluster_write_to_the_bucket(
    s3, sample_prepared, sample_masks, tmp_path
):
    val = sample_prepared["val"]
    url = f"s3://{BUCKET}/cluster"
    with dask_client(None, n_workers=2) as client:
        build_object_masks(
            val.data,
            f"{url}/masks/val.zarr",
            work=f"{url}/.work/masks-val",
            source=str(val.path),
            include_crowd=True,
            images_per_shard=2,
            client=client,
        )
        encode_dataset(JPEG, {"val": val}, f"{url}/coded", client=client, images_per_task=2)
    encode_dataset(JPEG, {"val": val}, tmp_path / "coded")  # the same, on local disk

    remote, local = MaskStore(f"{url}/masks/val.zarr"), MaskStore(sample_masks["val"])
    assert remote.image_ids == local.image_ids
    for image_id in local.image_ids:
        np.testing.assert_array_equal(remote.mask(image_id), local.mask(image_id))
    assert not s3.exists(f"{BUCKET}/cluster/.work/masks-val")  # work directory removed

    coded = f"{url}/coded"
    assert read_bytes_per_image(coded, "val") == read_bytes_per_image(tmp_path / "coded", "val")
    annotations = json.loads(coded_split(coded, "val").read_text())
    assert annotations["annotations"] == val.data["annotations"]
    for image in annotations["images"]:
        with s3.open(f"{BUCKET}/cluster/coded/images/val/{image['file_name']}") as handle:
            np.testing.assert_array_equal(
                read_rgb(handle),
                read_rgb(tmp_path / "coded" / "images" / "val" / image["file_name"]),
            )
    assert (
        s3.cat(f"{BUCKET}/cluster/coded/data.yaml") == (tmp_path / "coded/data.yaml").read_bytes()
    )
    assert not s3.exists(f"{BUCKET}/cluster/coded/_BUILDING")


def test_training_crops_read_images_from_the_bucket(s3, sample_prepared, sample_masks, tmp_path):
    val = sample_prepared["val"]
    url = f"s3://{BUCKET}/images/val"
    for image in val.images:
        s3.put(str(val.image_path(image)), f"{url}/{image['file_name']}")
    write_prepared(tmp_path / "val.json", val.data, image_root=url, final_dir=tmp_path)
    remote = PreparedDataset.load(tmp_path / "val.json")
    assert str(remote.image_path(val.images[0])) == f"{url}/{val.images[0]['file_name']}"
    crops = [TrainingCrops(d, {"object": sample_masks["val"]}, 64) for d in (val, remote)]
    for index in range(len(val.images)):
        torch.manual_seed(index)
        local = crops[0][index]
        torch.manual_seed(index)
        bucket = crops[1][index]
        assert local.keys() == bucket.keys()
        for key, value in local.items():
            torch.testing.assert_close(bucket[key], value, rtol=0, atol=0)


SLOW_MASKS = """
import sys, time
import numpy as np
from icmflow.masks.build import build_store
from icmflow.masks.store import pack

def slow(shard):
    time.sleep(0.3)
    return [pack(np.full((20, 30), shard % 2 == 0)) for _ in range(2)]

build_store(sys.argv[1], work=sys.argv[2], images=[{"id": i, "height": 20, "width": 30}
            for i in range(12)], payloads=list(range(6)), make_masks=slow, images_per_shard=2,
            attrs={"kind": "object", "fingerprint": "slow"}, client=None)
"""

SLOW_ENCODE = """
import sys, time
from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import encode_dataset
from icmflow.datasets.prepared import PreparedDataset

class Slow:
    suffix = ".jpg"
    def build(self):
        return self
    def encode(self, rgb):
        time.sleep(0.3)
        return CLASSICAL["jpeg"](family="jpeg", quality=30).encode(rgb)

encode_dataset(Slow(), {"val": PreparedDataset.load(sys.argv[2])}, sys.argv[1])
"""


def _start(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env)


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def test_sigkill_mid_build_leaves_nothing_that_reads_as_complete(s3, sample_prepared):
    store, work = f"s3://{BUCKET}/killed/masks.zarr", f"s3://{BUCKET}/killed/work"
    builder = _start(SLOW_MASKS, store, work)
    _wait_for(lambda: s3.exists(f"{BUCKET}/killed/work/done/000000"), "the first shard")
    _kill(builder)
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        MaskStore(store)
    rebuilt: list[int] = []

    def record(shard: int) -> list[np.ndarray]:
        rebuilt.append(shard)
        return [pack(np.full((20, 30), shard % 2 == 0)) for _ in range(2)]

    build_store(
        store,
        work=work,
        images=[{"id": i, "height": 20, "width": 30} for i in range(12)],
        payloads=list(range(6)),
        make_masks=record,
        images_per_shard=2,
        attrs={"kind": "object", "fingerprint": "slow"},
        client=None,
    )
    assert 0 not in rebuilt  # resumed after the finished shard(s)
    masks = MaskStore(store)
    assert [bool(masks.mask(i).all()) for i in range(12)] == [i // 2 % 2 == 0 for i in range(12)]

    val = sample_prepared["val"]
    coded = f"s3://{BUCKET}/killed/coded"
    encoder = _start(SLOW_ENCODE, coded, str(val.path))
    _wait_for(lambda: bool(s3.glob(f"{BUCKET}/killed/coded/bitstreams/val/*.jpg")), "an image")
    _kill(encoder)
    with pytest.raises(MissingInputError, match="incomplete"):
        coded_split(coded, "val")
    with pytest.raises(MissingInputError, match="_COMPLETE"):
        read_bytes_per_image(coded, "val")
    encode_dataset(JPEG, {"val": val}, coded)  # another codec: the killed build's files go
    assert len(read_bytes_per_image(coded, "val")) == len(val.images)


def test_stages_build_under_storage_root_and_copy_into_the_project(
    s3, sample_root, sample_masks, tmp_path, monkeypatch
):
    """masks@ and encode@ with `storage.root` in the bucket: the workers write there, the
    DVC outputs in the project are complete copies."""
    shutil.copytree(sample_root, tmp_path / "coco")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["sample"]["root"] = str(tmp_path / "coco")
    params["masks"].update(n_workers=2, images_per_shard=4)
    params["encode"].update(n_workers=2, images_per_task=2)
    params["storage"] = {"root": f"s3://{BUCKET}/project"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in (["prepare", "sample"], ["masks", "sample"], ["encode", "jpeg-q10"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output

    paths = Paths()
    shared = MaskStore(f"s3://{BUCKET}/project/masks/sample/object/val.zarr")
    local, fixture = (
        MaskStore(paths.mask_store("object", "sample", "val")),
        MaskStore(sample_masks["val"]),
    )
    assert shared.image_ids == local.image_ids == fixture.image_ids
    for image_id in fixture.image_ids:
        np.testing.assert_array_equal(local.mask(image_id), fixture.mask(image_id))
    coded = paths.coded("jpeg-q10")
    assert read_bytes_per_image(coded, "val") == read_bytes_per_image(
        f"s3://{BUCKET}/project/encode/jpeg-q10", "val"
    )
    assert json.loads((coded / "provenance.json").read_text())["stage"] == "encode@jpeg-q10"
    assert not s3.exists(f"{BUCKET}/project/.work")


def test_storage_root_must_be_a_url_fsspec_can_write():
    assert StorageParams(root="s3://bucket/prefix/").root == "s3://bucket/prefix"
    assert StorageParams().root is None
    with pytest.raises(ValueError, match="file:///"):
        StorageParams(root="/mnt/shared")
    with pytest.raises(ValueError, match="unknown storage protocol"):
        check_url("nosuch://bucket")


def test_a_bucket_without_credentials_stops_the_stages_naming_storage_root(
    s3, tmp_path, monkeypatch
):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["storage"] = {"root": f"s3://{BUCKET}/no-credentials"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    try:
        with monkeypatch.context() as env:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                env.delenv(key)
            env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
            env.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
            env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask either
            s3fs.S3FileSystem.clear_instance_cache()
            for command in (["masks", "sample"], ["encode", "jpeg-q10"]):
                result = CliRunner().invoke(app, command)
                output = result.output
                assert result.exit_code == 1, output
                assert f"storage.root s3://{BUCKET}/no-credentials: cannot write there" in output
                assert "NoCredentialsError" in output and "AWS_ACCESS_KEY_ID" in output
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # the next tests' instances have credentials
    assert not s3.exists(f"{BUCKET}/no-credentials")
