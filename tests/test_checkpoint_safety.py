"""Checkpoints are data, never code: a file holding a Python object that would run code when
unpickled is refused, and nothing runs; CompressAI's own checkpoint layouts still load."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import yaml
from compressai.models import ScaleHyperprior
from typer.testing import CliRunner

from icmflow.codecs.checkpoint import load_codec, save_untrained
from icmflow.coding.learned import LearnedCodec
from icmflow.core.errors import CheckpointError
from icmflow.datasets.images import write_png
from icmflow.datasets.prepared import write_prepared
from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from icmflow.training.data import TrainingCrops
from icmflow.training.objectives import OBJECTIVES
from icmflow.training.trainer import TrainSettings, train_codec
from tests.helpers.codecs import textured_image, tiny_codec
from tests.helpers.params import learned_entry
from tests.helpers.project import REPO


class WritesAFile:
    """Unpickling it creates `path`: what a hostile checkpoint would do (or far worse)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def hostile(path: Path, marker: Path, **record) -> Path:
    """A checkpoint in CompressAI's layout with one booby-trapped entry."""
    torch.save({**record, "epoch": 1, "note": WritesAFile(marker)}, path)
    assert not marker.exists()
    return path


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    model = tiny_codec()
    path = hostile(tmp_path / "c.pth.tar", marker, state_dict=model.state_dict())
    with pytest.raises(CheckpointError) as err:
        load_codec(path, arch="bmshj2018-hyperprior")
    message = str(err.value)
    assert str(path) in message and "refused" in message and "io.open" in message
    assert not marker.exists()


def test_a_training_state_that_would_run_code_is_refused_and_nothing_runs(
    sample_prepared, tmp_path
):
    marker, state = tmp_path / "ran", tmp_path / "work" / "state.pt"
    state.parent.mkdir()
    hostile(state, marker, step=2)
    with pytest.raises(CheckpointError, match=f"{state}: refused: this training state"):
        train_codec(
            tiny_codec(),
            OBJECTIVES["mse"](lmbda=0.01),
            TrainingCrops(sample_prepared["train"], {}, 64),
            TrainSettings(steps=2, batch_size=2, lr=1e-3, aux_lr=1e-3),
            log_path=tmp_path / "log.csv",
            state_path=state,
        )
    assert not marker.exists()


def test_encode_refuses_a_hostile_checkpoint_with_a_message_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["codecs"] = {"theirs": learned_entry(), "jpeg-q50": {"family": "jpeg", "quality": 50}}
    params["report"]["anchors"] = ["jpeg"]
    params["tasks"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_png(tmp_path / "images" / "a.png", textured_image(32, 48))
    image = {"id": 1, "file_name": "a.png", "width": 48, "height": 32}
    data = {"images": [image], "annotations": [], "categories": []}
    split = params["encode"]["split"]
    write_prepared(
        Paths().prepared_split("sample", split),
        data,
        image_root=tmp_path / "images",
        final_dir=Paths().prepared("sample"),
    )
    marker = tmp_path / "ran"
    checkpoint = Paths().checkpoint("theirs")
    checkpoint.parent.mkdir(parents=True)
    hostile(checkpoint, marker, state_dict=tiny_codec(N=8, M=8).state_dict())
    result = CliRunner().invoke(app, ["encode", "theirs"])
    assert result.exit_code == 1, result.output
    assert f"{checkpoint}: refused" in result.output
    assert not marker.exists() and not Paths().coded("theirs").exists()


def test_compressai_layouts_still_load_and_code_identically(tmp_path):
    """A plain state dict, and `examples/train.py`'s record (with its scheduler's state)."""
    model = tiny_codec()
    rgb = textured_image(40, 56)
    expected = LearnedCodec(model).encode(rgb).data
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min")
    layouts = {
        "plain": model.state_dict(),
        "train.py": {
            "epoch": 3,
            "state_dict": model.state_dict(),
            "loss": torch.tensor(1.5),
            "optimizer": optimizer.state_dict(),
            "aux_optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
        },
    }
    for name, record in layouts.items():
        path = tmp_path / f"{name}.pth.tar"
        torch.save(record, path)
        loaded = load_codec(path, arch="bmshj2018-hyperprior")
        assert LearnedCodec(loaded).encode(rgb).data == expected, name


def test_icmflow_checkpoints_are_weights_only_files_compressai_reads(tmp_path):
    path = save_untrained(
        tmp_path / "c.pth.tar", tiny_codec(), arch="bmshj2018-hyperprior", model_args={}
    )
    record = torch.load(path, weights_only=True)  # no Python object beyond plain data
    ScaleHyperprior.from_state_dict(record["state_dict"])


def test_a_full_disk_while_saving_keeps_the_old_checkpoint_and_no_temporary_file(
    tmp_path, monkeypatch
):
    path = save_untrained(
        tmp_path / "c.pth.tar", tiny_codec(), arch="bmshj2018-hyperprior", model_args={}
    )
    before = path.read_bytes()
    save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        save(obj, handle, *args, **kwargs)  # as far as the disk allowed...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ...write() raises, no name

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as err:
        save_untrained(path, tiny_codec(seed=1), arch="bmshj2018-hyperprior", model_args={})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
