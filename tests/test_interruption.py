"""SIGKILL the masks stage at random moments: reruns finish byte-identical, nothing half-done is
ever readable as complete. Kill training after a saved state: the rerun's checkpoint is the
uninterrupted run's, byte for byte.

The stage runs as the real `icmflow masks` command, with its dask LocalCluster (scheduler in the
command's process, one worker process), in its own process group. Kills alternate between the
whole group (as a job scheduler or a terminal would) and the command alone (as the OOM killer
would), whose orphaned dask worker must then exit by itself before the rerun. Masks need only
the prepared JSON, so the dataset is synthetic: large images make the build, not the start-up,
most of a run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from icmflow.core.files import replace
from icmflow.datasets.prepared import write_prepared
from icmflow.masks.store import MaskStore, store_attrs
from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from tests.helpers.project import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="reads process groups from /proc"),
]

KILLS = 10
SPLITS = {"train": 80, "val": 24}
BIN = Path(sys.executable).parent


def synthetic_split(n_images: int, first_id: int, rng: np.random.Generator) -> dict:
    """Big images with many polygons: a few seconds of mask building in all."""
    images, annotations = [], []
    for image_id in range(first_id, first_id + n_images):
        w, h = 3000, 2000
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h})
        for _ in range(int(rng.integers(3, 12))):
            cx, cy, r = rng.uniform(100, w - 100), rng.uniform(100, h - 100), rng.uniform(20, 90)
            t = np.sort(rng.uniform(0, 2 * np.pi, 16))
            polygon = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1).round(2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": [polygon.ravel().tolist()],
                    "bbox": [cx - r, cy - r, 2 * r, 2 * r],
                    "area": float(np.pi * r * r),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "o"}]}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    splits = {s: {"annotations": f"{s}.json", "images": s} for s in SPLITS}
    params["datasets"] = {"big": {"format": "coco", "root": "source", "splits": splits}}
    params["tasks"] = {}
    params["train"]["dataset"] = params["encode"]["dataset"] = "big"
    params["masks"].update(n_workers=1, images_per_shard=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(0)
    paths = Paths(root)
    for k, (split, n) in enumerate(SPLITS.items()):
        write_prepared(
            paths.prepared_split("big", split),
            synthetic_split(n, 1 + 1000 * k, rng),
            image_root=root / "source" / split,
            final_dir=paths.prepared("big"),
        )
    return root


def start(project: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(
        [str(BIN / "icmflow"), "masks", "big"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(project / "stderr.log").open("ab"),
        start_new_session=True,  # its own process group: the command and its dask workers
    )


def live_members(group: int) -> list[int]:
    """Processes of `group` that are not zombies."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def kill(process: subprocess.Popen, *, group: bool) -> None:
    """SIGKILL the command (and with `group` its workers); return once none of them is left."""
    if group:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while live_members(process.pid):
        assert time.monotonic() < deadline, f"orphans survive: {live_members(process.pid)}"
        time.sleep(0.05)


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def split_of(store: Path) -> str:
    """`<split>.zarr`, or `build-<split>/store.zarr` in the work directory."""
    return store.parent.name.removeprefix("build-") if store.name == "store.zarr" else store.stem


def assert_nothing_half_done_reads_as_complete(project: Path, reference: dict, when: str) -> None:
    final = Paths(project).masks("object", "big")
    if final.exists():
        assert files(final) == reference["object"], f"{when}: {final} differs from a full run"
    for marker in (project / "data").rglob("zarr.json"):
        store = marker.parent
        if store.suffix != ".zarr":
            continue  # an array inside a store
        if any(part.startswith(".object.old-") for part in store.parts):
            continue  # an old store being deleted, in the work folder: nothing reads it
        if store_attrs(store).get("complete"):
            assert files(store) == reference[split_of(store)], f"{when}: {store} is not complete"


def progress(project: Path) -> str:
    """What a killed run left: shards done per split, finished split stores, the final store."""
    work = Paths(project).work("masks", "big")
    done = {s: len(list((work / f"build-{s}" / "done").glob("*"))) for s in SPLITS}
    staged = sorted(p.name for p in (work / "out").glob("*.zarr"))
    final = Paths(project).masks("object", "big").exists()
    return f"shards done {done}, staged {staged}, final store {'in place' if final else 'absent'}"


def test_sigkill_at_random_moments_then_rerun(project):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    begin = time.monotonic()
    assert start(project).wait(timeout=300) == 0, (project / "stderr.log").read_text()[-3000:]
    duration = time.monotonic() - begin
    final = Paths(project).masks("object", "big")
    reference = {"object": files(final)}
    reference.update({split: files(final / f"{split}.zarr") for split in SPLITS})
    Paths(project).root.joinpath("data", "masks").rename(project / "reference-masks")
    moments, finished = [], 0
    while len(moments) < KILLS:
        process = start(project)
        # One kill in each tenth of a run; 0.9: the reference run, the first, starts coldest.
        moment = 0.9 * duration * (len(moments) + rng.random()) / KILLS
        try:
            code = process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            group = len(moments) % 2 == 0
            kill(process, group=group)
            moments.append(round(moment, 2))
            whom = "group" if group else "command"
            when = f"after a SIGKILL of the {whom} at {moment:.2f} s (seed {seed}, {moments})"
            assert_nothing_half_done_reads_as_complete(project, reference, when)
            print(f"{when}: left {progress(project)}")
        else:  # this rerun finished before its moment: it must be complete and identical
            assert code == 0, (project / "stderr.log").read_text()[-3000:]
            assert files(final) == reference["object"], f"seed {seed}, kills {moments}"
            finished += 1
        assert finished <= 2 * KILLS, f"runs end before their kills (seed {seed}, {duration:.1f} s)"
    assert start(project).wait(timeout=300) == 0, (project / "stderr.log").read_text()[-3000:]
    assert files(final) == reference["object"], f"seed {seed}, kills at {moments}"
    for split in SPLITS:
        assert len(MaskStore(final / f"{split}.zarr")) == SPLITS[split]
    assert not Paths(project).work("masks", "big").exists()
    leftovers = [p.name for p in final.parent.iterdir() if p.name != "object"]
    assert not leftovers, f"left beside the store: {leftovers}"


def test_replace_deletes_the_old_output_beside_the_new_one(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / ".object.old-12345" / "half-deleted").mkdir(parents=True)  # a replace killed there
    for version in ("old", "new"):
        (work / "object").mkdir()
        (work / "object" / "f").write_text(version)
        replace(work / "object", out / "object")
    assert [p.name for p in out.iterdir()] == ["object"]
    assert (out / "object" / "f").read_text() == "new"
    assert list(work.iterdir()) == []


CODEC = "meanscale-mse-1"


@pytest.fixture
def training_project(tmp_path, sample_root, monkeypatch) -> Path:
    """The sample, prepared, and a tiny codec to train for a few quick steps."""
    shutil.copytree(sample_root, tmp_path / "coco")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["sample"]["root"] = str(tmp_path / "coco")
    params["train"].update(steps=40, batch_size=2, patch_size=64, save_every=10, device="cpu")
    params["codecs"][CODEC]["model_args"] = {"N": 8, "M": 8}
    params["codecs"][CODEC].pop("init", None)  # from random weights: no base to train first
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["prepare", "sample"]).exit_code == 0
    return tmp_path


def train_in_process() -> None:
    result = CliRunner().invoke(app, ["train", CODEC])
    assert result.exit_code == 0, result.output


def test_training_killed_after_a_saved_state_resumes_to_the_same_bytes(training_project):
    """SIGKILL once a state is saved: the rerun's checkpoint and log are byte for byte those of
    an uninterrupted run (every random generator is restored, not reseeded)."""
    project, paths = training_project, Paths(training_project)
    train_in_process()
    reference = paths.checkpoint(CODEC).read_bytes(), paths.train_log(CODEC).read_text()
    shutil.rmtree(paths.model(CODEC))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [str(BIN / "icmflow"), "train", CODEC],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(project / "stderr.log").open("ab"),
        start_new_session=True,
    )
    state = paths.work("train", CODEC) / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists():
        assert process.poll() is None, (project / "stderr.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no state saved in 120 s"
        time.sleep(0.01)
    kill(process, group=True)
    assert not paths.checkpoint(CODEC).exists(), "training finished before the kill"
    train_in_process()  # resumes from the saved state
    assert paths.train_log(CODEC).read_text() == reference[1]
    assert paths.checkpoint(CODEC).read_bytes() == reference[0]
