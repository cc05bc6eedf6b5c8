"""Stages through the CLI on broken inputs: a clear message, or a logged skip; no partial output."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from icmflow.core.locks import exclusive
from icmflow.masks.store import MaskStore
from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from icmflow.runtime import cluster
from tests.helpers.project import REPO

runner = CliRunner()


@pytest.fixture
def project(tmp_path, monkeypatch, sample_root):
    """A working directory with a copy of the sample dataset and params pointing at it."""
    shutil.copytree(sample_root, tmp_path / "coco")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["sample"]["root"] = str(tmp_path / "coco")
    params["masks"].update(n_workers=1, images_per_shard=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def set_on_error(project, policy: str) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prepare"]["on_error"] = policy
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def break_polygon(project) -> int:
    path = project / "coco" / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    index = next(
        i for i, a in enumerate(coco["annotations"]) if isinstance(a["segmentation"], list)
    )
    coco["annotations"][index]["segmentation"][0][0] = -300.0
    path.write_text(json.dumps(coco))
    return index


def test_bad_inputs_stop_prepare_with_file_and_entry_and_no_output(project):
    path = project / "coco" / "annotations" / "instances_val.json"
    index = break_polygon(project)
    result = runner.invoke(app, ["prepare", "sample"])
    assert result.exit_code == 1
    assert str(path) in result.output and f"annotations[{index}]" in result.output
    assert not Paths().prepared("sample").exists()
    path.write_text(path.read_text()[:-40])  # truncated
    result = runner.invoke(app, ["prepare", "sample"])
    assert result.exit_code == 1 and "invalid JSON" in result.output
    assert not Paths().prepared("sample").exists()


def test_skip_policy_logs_skips_and_the_pipeline_goes_on(project):
    index = break_polygon(project)
    coco = json.loads((project / "coco" / "annotations" / "instances_val.json").read_text())
    broken_image = coco["annotations"][index]["image_id"]
    missing = next(i for i, im in enumerate(coco["images"]) if im["id"] != broken_image)
    (project / "coco" / "val" / coco["images"][missing]["file_name"]).unlink()
    set_on_error(project, "skip")
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    report = json.loads((Paths().prepared("sample") / "report.json").read_text())
    entries = {s["entry"].split(" ")[0] for s in report["skipped"]}
    assert entries == {f"annotations[{index}]", f"images[{missing}]"}
    result = runner.invoke(app, ["masks", "sample"])
    assert result.exit_code == 0, result.output
    store = Paths().mask_store("object", "sample", "val")
    assert (store / "zarr.json").is_file()
    assert json.loads((store / "zarr.json").read_text())["attributes"]["icmflow"]["complete"]
    assert not (project / "data" / ".work" / "masks" / "sample").exists()


def test_training_twice_gives_the_same_codec(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(steps=3, batch_size=2, patch_size=64)
    params["codecs"]["meanscale-base"]["model_args"] = {"N": 8, "M": 8}
    params["codecs"]["meanscale-base"].pop("train", None)  # the shared settings above
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    runs = []
    for _ in range(2):
        torch.rand(10)  # whatever drew from torch's generator before must not matter
        result = runner.invoke(app, ["train", "meanscale-base"])
        assert result.exit_code == 0, result.output
        checkpoint = torch.load(Paths().checkpoint("meanscale-base"), weights_only=False)
        runs.append((Paths().train_log("meanscale-base").read_text(), checkpoint["state_dict"]))
        shutil.rmtree(Paths().model("meanscale-base"))
    (log_a, weights_a), (log_b, weights_b) = runs
    assert log_a == log_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def edit_params(project, **sections) -> None:
    """Update sections of the project's params.yaml (each a dict merged into the section)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize(
    "argv",
    [
        ["masks", "sample"],
        ["train", "meanscale-mse-1"],
        ["encode", "jpeg-q25"],
        ["task", "yolo-shapes"],
        ["finetune", "meanscale-object-2", "yolo-shapes"],
    ],
)
def test_a_stage_already_running_on_the_same_key_stops_a_second_run(project, argv):
    with exclusive(Paths().lock(argv[0], "-".join(argv[1:])), "the first run"):
        result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    command = " ".join(argv)
    assert f"another `icmflow {command}` is running (pid {os.getpid()}" in result.output


@pytest.mark.slow
def test_two_masks_runs_at_once_and_a_killed_one_leaves_no_stale_lock(project):
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    lock = Paths().lock("masks", "sample")
    first = subprocess.Popen(
        [str(Path(sys.executable).parent / "icmflow"), "masks", "sample"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # with its dask workers: one group to kill
    )
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.01)
        second = runner.invoke(app, ["masks", "sample"])
        assert second.exit_code == 1, second.output
        assert f"another `icmflow masks sample` is running (pid {first.pid}" in second.output
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    result = runner.invoke(app, ["masks", "sample"])  # the kernel released the killed one's lock
    assert result.exit_code == 0, result.output
    for split in ("train", "val"):
        assert len(MaskStore(Paths().mask_store("object", "sample", split))) > 0


def test_a_gpu_that_is_not_there_is_named_before_any_work(project, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    edit_params(project, train={"device": "cuda"}, encode={"device": "cuda:1"})
    for argv, setting in (
        (["train", "meanscale-mse-1"], "train.device is cuda"),
        (["encode", "meanscale-mse-1"], "encode.device is cuda:1"),
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 1, result.output
        assert f"{setting} but no CUDA device is visible" in result.output
        assert not (project / "data" / ".work" / argv[0] / argv[1]).exists()


def test_an_unreachable_scheduler_is_named_after_a_bounded_wait(project, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    edit_params(project, masks={"scheduler": address}, encode={"scheduler": address})
    for stage, argv in (("masks", ["masks", "sample"]), ("encode", ["encode", "jpeg-q25"])):
        begin = time.monotonic()
        result = runner.invoke(app, argv)
        assert result.exit_code == 1, result.output
        assert f"{stage}.scheduler: no dask scheduler answered at {address}" in result.output
        assert time.monotonic() - begin < 30


def test_train_before_masks_says_which_stage_to_run(project):
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    edit_params(project, train={"steps": 1, "batch_size": 2})
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["codecs"]["meanscale-object-2"].pop("init")  # no base to train first
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["train", "meanscale-object-2"])
    assert result.exit_code == 1, result.output
    assert "no object mask store; run `icmflow masks sample` first" in result.output


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only: its mode where that binds (not root), else (root ignores
    modes) the calls that create files and folders refuse it, as the kernel would."""

    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
            return
        inside = folder.resolve()

        def refused(path) -> bool:
            return inside in (Path(path).resolve(), *Path(path).resolve().parents)

        mkdir, open_ = os.mkdir, io.open

        def guarded_mkdir(path, *args, **kwargs):
            if refused(path) and Path(path).resolve() != inside:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return mkdir(path, *args, **kwargs)

        def guarded_open(path, mode="r", *args, **kwargs):
            if isinstance(path, (str, Path)) and set(mode) & set("wax+") and refused(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return open_(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", guarded_mkdir)
        monkeypatch.setattr(io, "open", guarded_open)
        monkeypatch.setattr(builtins, "open", guarded_open)

    yield make


def test_a_read_only_output_folder_is_named(project, read_only):
    read_only(project / "data")
    try:
        result = runner.invoke(app, ["prepare", "sample"])
    finally:
        (project / "data").chmod(0o755)
    assert result.exit_code == 1, result.output
    assert "data/prepared/sample: permission denied: give this user access" in result.output
    assert not (project / "data" / "prepared").exists()


def test_a_full_disk_is_named_and_leaves_no_temporary_file(project, monkeypatch):
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    write_bytes = Path.write_bytes

    def full_disk(self, data):
        if "out" not in self.parts:  # the coded files
            return write_bytes(self, data)
        write_bytes(self, data[: len(data) // 2])  # the device filled up halfway
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    edit_params(project, encode={"images_per_task": 64})  # one task: in this process
    result = runner.invoke(app, ["encode", "jpeg-q25"])
    assert result.exit_code == 1, result.output
    assert "no space left on the device" in result.output
    assert "data/.work/encode/jpeg-q25/out/" in result.output  # the file it was writing
    assert not [p for p in project.rglob("*") if ".tmp" in p.name]
    assert not Paths().coded("jpeg-q25").exists()


def test_coded_files_changed_after_encoding_stop_evaluate_naming_them(project):
    for argv in (["prepare", "sample"], ["masks", "sample"], ["encode", "jpeg-q25"]):
        assert runner.invoke(app, argv).exit_code == 0, argv
    assert runner.invoke(app, ["evaluate", "jpeg-q25"]).exit_code == 0
    coded = Paths().coded("jpeg-q25")
    first, second = sorted((coded / "bitstreams" / "val").iterdir())[:2]
    decoded = sorted((coded / "images" / "val").iterdir())[0]
    originals = {path: path.read_bytes() for path in (first, second, decoded)}

    def swap() -> None:
        first.write_bytes(originals[second])
        second.write_bytes(originals[first])

    flipped = bytes([originals[first][0] ^ 1]) + originals[first][1:]
    damages = {
        "truncated": lambda: first.write_bytes(originals[first][:-10]),
        "damaged": lambda: first.write_bytes(flipped),
        "swapped": swap,
        "PNG deleted": decoded.unlink,
    }
    for what, damage in damages.items():
        damage()
        result = runner.invoke(app, ["evaluate", "jpeg-q25"])
        assert result.exit_code == 1, f"{what}: {result.output}"
        named = decoded if what == "PNG deleted" else first
        assert f"{named}: " in result.output, what
        assert "rerun `icmflow encode jpeg-q25`" in result.output, what
        for path, data in originals.items():
            path.write_bytes(data)
    assert runner.invoke(app, ["evaluate", "jpeg-q25"]).exit_code == 0
