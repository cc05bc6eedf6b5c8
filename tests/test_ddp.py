"""Training on several processes (gloo on CPU): the same steps as one process, written once.

Two processes with DDP train the sample's codec like one process with the same global batch;
only rank 0 writes; a multi-process `icmflow train` (relaunched under torchrun) killed with
SIGKILL resumes from rank 0's state on every process.
"""

from __future__ import annotations

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
import torch.multiprocessing as mp
import yaml
from typer.testing import CliRunner

from icmflow.codecs.checkpoint import load_codec
from icmflow.core.errors import IcmflowError
from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from icmflow.runtime.distributed import local_device, torchrun_command
from icmflow.training.data import StreamSampler
from icmflow.training.trainer import read_log
from tests.helpers.ddp import deterministic_noise, partial_steps_process, train_process
from tests.helpers.project import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="reads processes from /proc"),
]

CODEC = "meanscale-base"
BIN = Path(sys.executable).parent
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_parents() -> dict[int, int]:
    """Parent of every live (not zombie) process."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descending from it (torchrun starts its own in new sessions)."""
    parents = live_parents()
    tree = [pid]
    for member in tree:
        tree += [child for child, parent in parents.items() if parent == member]
    return tree


def kill_tree(process: subprocess.Popen) -> None:
    tree = process_tree(process.pid)
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while set(tree[1:]) & set(live_parents()):
        assert time.monotonic() < deadline, "processes survive SIGKILL"
        time.sleep(0.05)


def write_params(root: Path, **train) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def project(tmp_path_factory, sample_root) -> Path:
    """The sample, prepared, and a tiny codec to train with batches of 4 crops of 64 px."""
    root = tmp_path_factory.mktemp("ddp")
    shutil.copytree(sample_root, root / "coco")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["sample"]["root"] = str(root / "coco")
    params["tasks"] = {}
    params["codecs"][CODEC]["model_args"] = {"N": 8, "M": 8}
    params["codecs"][CODEC].pop("train", None)  # the shared settings below, not the demo's
    params["train"].update(
        steps=6,
        batch_size=4,
        patch_size=64,
        lr=1e-2,
        lr_milestones=[],
        save_every=2,
        num_workers=0,
        device="cpu",
        nproc=1,
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        result = runner.invoke(app, ["prepare", "sample"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root


def test_processes_split_each_global_batch_and_its_crops():
    one = StreamSampler(10, 4, seed=3)
    stream = [item for item, _ in zip(one, range(12), strict=False)]
    ranks = [StreamSampler(10, 4, seed=3, rank=r, world=2) for r in range(2)]
    halves = [[item for item, _ in zip(s, range(6), strict=False)] for s in ranks]
    for step in range(3):
        together = halves[0][2 * step : 2 * step + 2] + halves[1][2 * step : 2 * step + 2]
        assert sorted(together) == sorted(stream[4 * step : 4 * step + 4])
    assert sorted(i for i, _ in stream[:10]) == list(range(10))  # a permutation per pass
    resumed = StreamSampler(10, 4, seed=3, start=2)
    assert [item for item, _ in zip(resumed, range(4), strict=False)] == stream[8:12]
    with pytest.raises(ValueError, match="multiple of 3"):
        StreamSampler(10, 4, seed=3, world=3)


def test_steps_whose_loss_leaves_parameters_out_train_on_two_processes(tmp_path):
    """An objective with `partial_steps` (here: the decoder unused in step 1, as in the
    compressed-domain warm-up) trains under DDP, which otherwise stops at the next step."""
    mp.spawn(partial_steps_process, (2, free_port(), str(tmp_path)), nprocs=2)
    assert [row["step"] for row in read_log(tmp_path / "log.csv")] == [1, 2, 3]


def test_two_processes_train_like_one_and_only_rank_0_writes(project, monkeypatch):
    monkeypatch.chdir(project)
    with deterministic_noise():
        result = runner.invoke(app, ["train", CODEC])
    assert result.exit_code == 0, result.output
    alone = read_log(Paths().train_log(CODEC))
    weights = torch.load(Paths().checkpoint(CODEC), weights_only=False)["state_dict"]
    alone_codec = project / "alone.pth.tar"
    shutil.move(Paths().checkpoint(CODEC), alone_codec)
    shutil.rmtree(project / "models")

    write_params(project, nproc=2)
    mp.spawn(train_process, (2, free_port(), str(project), CODEC), nprocs=2)
    together = read_log(Paths().train_log(CODEC))
    assert [r["step"] for r in together] == [1, 2, 3, 4, 5, 6]
    assert len({r["loss"] for r in together}) == 6  # it trains
    for a, b in zip(alone, together, strict=True):
        for term in ("loss", "bpp", "mse", "aux_loss"):
            assert b[term] == pytest.approx(a[term], rel=1e-4), (term, a, b)
    shared = torch.load(Paths().checkpoint(CODEC), weights_only=False)["state_dict"]
    # GDN's gammas sit at their lower bound, where compressai's LowerBound passes a gradient or
    # not by its sign: a last-bit difference in the all-reduce's sum can move such an element by
    # one Adam step. Those are compared by what the codec computes with them, below.
    for key, value in weights.items():
        if not key.endswith(".gamma"):
            torch.testing.assert_close(
                shared[key], value, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}"
            )
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = [load_codec(path).eval()(x) for path in (alone_codec, Paths().checkpoint(CODEC))]
    torch.testing.assert_close(outputs[1]["x_hat"], outputs[0]["x_hat"], rtol=1e-3, atol=1e-4)
    for name, likelihoods in outputs[0]["likelihoods"].items():
        torch.testing.assert_close(
            outputs[1]["likelihoods"][name], likelihoods, rtol=1e-3, atol=1e-6
        )

    writes = [json.loads((project / f"writes-{rank}.json").read_text()) for rank in (0, 1)]
    assert writes[1] == [], f"rank 1 wrote {writes[1]}"
    written = {entry.split(" ", 1)[1] for entry in writes[0]}
    assert {"models/" + CODEC + "/checkpoint.pth.tar", "models/" + CODEC + "/train_log.csv"} <= {
        Path(p).as_posix() for p in written
    }
    assert any(p.endswith("state.pt") for p in written)  # resumable state, by rank 0
    write_params(project, nproc=1)


def test_killed_torchrun_training_resumes_on_every_process(project):
    shutil.rmtree(project / "models", ignore_errors=True)
    write_params(project, nproc=2, steps=400, save_every=20)
    work = Paths(project).work("train", CODEC)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    log = project / "torchrun.log"

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [str(BIN / "icmflow"), "train", CODEC],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("a"),
        )

    try:
        process = start()
        deadline = time.monotonic() + 120
        while not (work / "state.pt").is_file():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        kill_tree(process)  # the command, torchrun and both training processes at once
        saved = torch.load(work / "state.pt", weights_only=False)
        assert 20 <= saved["step"] < 400 and not Paths(project).checkpoint(CODEC).exists()

        process = start()
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        write_params(project, nproc=1, steps=6, save_every=2)
    text = log.read_text()
    assert text.count(f"resuming training at step {saved['step']}") >= 2, text[-3000:]
    rows = read_log(Paths(project).train_log(CODEC))
    assert [r["step"] for r in rows] == list(range(1, 401))
    assert rows[: saved["step"]] == [{k: float(v) for k, v in row.items()} for row in saved["rows"]]
    assert not work.exists()


def test_the_launch_is_torchrun_of_the_same_command():
    command = torchrun_command(4, ["--params", "p.yaml", "train", "c"])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in command and "--standalone" in command
    assert command[-6:] == ["-m", "icmflow", "--params", "p.yaml", "train", "c"]


def test_each_process_takes_its_own_gpu_and_more_processes_than_gpus_is_an_error():
    assert local_device(torch.device("cuda"), 1, visible=2) == torch.device("cuda", 1)
    assert local_device(torch.device("cpu"), 3, visible=0) == torch.device("cpu")
    with pytest.raises(IcmflowError, match=r"set train\.nproc to at most 2"):
        local_device(torch.device("cuda"), 2, visible=2)
