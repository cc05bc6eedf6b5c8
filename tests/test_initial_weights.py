"""`init:` of learned codec entries: training starts from another entry's checkpoint, a
CompressAI-layout file or a zoo file in the torch hub cache, checked before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from icmflow.codecs.architectures import create_model
from icmflow.codecs.initial import load_initial, read_weights, zoo_file
from icmflow.core.errors import CheckpointError
from icmflow.core.resume import file_digest
from icmflow.pipeline.cli import app
from icmflow.pipeline.dvcfile import render
from icmflow.pipeline.params import ParamsError, check_initial_weights, load_params
from icmflow.pipeline.paths import Paths
from icmflow.stages import train as train_stage
from tests.helpers.params import learned_entry
from tests.helpers.project import REPO

runner = CliRunner()
ARCH = "bmshj2018-hyperprior"


@pytest.fixture
def raw() -> dict:
    """The project's params with a tiny base codec and one entry fine-tuned from it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = {}
    params["codecs"] = {
        "base": learned_entry("mse", 0.01),
        "tuned": {**learned_entry("object", 0.05), "init": "base"},
        "jpeg-q10": {"family": "jpeg", "quality": 10},
    }
    params["report"]["anchors"] = ["jpeg"]
    return params


def load(tmp_path: Path, raw: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def problems(tmp_path: Path, raw: dict) -> str:
    with pytest.raises(ParamsError) as err:
        check_initial_weights(load(tmp_path, raw), ["tuned"], tmp_path)
    return str(err.value)


def test_init_names_a_learned_entry_of_the_same_architecture_without_cycles(tmp_path, raw):
    assert load(tmp_path, raw).learned("tuned").init_entry == "base"
    cases = {
        "nope": r"codecs\.tuned\.init: 'nope' is not under codecs",
        "jpeg-q10": r"codecs\.tuned\.init: 'jpeg-q10' is a jpeg codec",
        "tuned": r"init cycle: tuned -> tuned",
    }
    for init, message in cases.items():
        raw["codecs"]["tuned"]["init"] = init
        with pytest.raises(ParamsError, match=message):
            load(tmp_path, raw)
    raw["codecs"]["tuned"]["init"] = "base"
    raw["codecs"]["base"]["init"] = "tuned"
    with pytest.raises(ParamsError, match=r"init cycle: base -> tuned -> base"):
        load(tmp_path, raw)
    raw["codecs"]["base"] = learned_entry("mse", 0.01, arch="mbt2018-mean")
    with pytest.raises(ParamsError) as err:
        load(tmp_path, raw)
    assert "codecs.tuned (arch 'bmshj2018-hyperprior') cannot start from codecs.base" in str(
        err.value
    ) and "(arch 'mbt2018-mean')" in str(err.value)


def test_init_forms_are_checked_naming_their_keys(tmp_path, raw):
    raw["codecs"]["tuned"]["init"] = {"zoo": "cheng2020-attn", "quality": 3}
    with pytest.raises(ParamsError, match=r"codecs\.tuned\.init: zoo weights of 'cheng2020-attn'"):
        load(tmp_path, raw)
    raw["codecs"]["tuned"]["init"] = {"zoo": ARCH}
    with pytest.raises(ParamsError, match=r"codecs\.tuned\.init\.quality: Field required"):
        load(tmp_path, raw)
    raw["codecs"]["tuned"]["init"] = {"file": "w.pth", "quality": 1}
    with pytest.raises(ParamsError, match=r"codecs\.tuned\.init\.quality: unknown key"):
        load(tmp_path, raw)
    raw["codecs"]["tuned"]["init"] = "no.dots"
    with pytest.raises(ParamsError, match=r"codecs\.tuned\.init: String should match"):
        load(tmp_path, raw)


def test_model_args_of_other_shapes_are_an_error_naming_both_entries(tmp_path, raw):
    check_initial_weights(load(tmp_path, raw), ["tuned"], tmp_path)  # same model_args
    raw["codecs"]["tuned"]["model_args"] = {"N": 8, "M": 16}
    message = problems(tmp_path, raw)
    assert "codecs.tuned (model_args {'M': 16, 'N': 8}) cannot start from codecs.base" in message
    assert "(model_args {'M': 8, 'N': 8})" in message and "of other shapes" in message


def save_state(path: Path, model: torch.nn.Module, *, old_keys: bool = False) -> Path:
    """`model`'s state dict as CompressAI's zoo files hold it: a plain dict of tensors, with
    `old_keys` in the layout of older CompressAI releases (DataParallel's `module.` prefix, the
    entropy bottleneck's parameter lists)."""
    state = model.state_dict()
    if old_keys:
        renamed = {}
        for key, value in state.items():
            for kind in ("matrices", "biases", "factors"):  # now ModuleLists, once "_" ones
                key = key.replace(f"entropy_bottleneck.{kind}.", f"entropy_bottleneck._{kind}.")
            renamed[f"module.{key}"] = value
        state = renamed
    torch.save(state, path)
    return path


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def test_zoo_layout_files_load_renamed_and_exactly(tmp_path):
    trained = create_model(ARCH, seed=1, N=8, M=8)
    trained.update(force=True)
    path = save_state(tmp_path / "old.pth.tar", trained, old_keys=True)
    assert any("_matrices.0" in k for k in torch.load(path, weights_only=True))
    model = load_initial(create_model(ARCH, seed=2, N=8, M=8), read_weights(path))
    assert_same_weights(model.state_dict(), trained.state_dict())
    with pytest.raises(CheckpointError, match=r"do not fit the model: .* of other shapes"):
        load_initial(create_model(ARCH, N=8, M=16), read_weights(path))


def test_files_are_read_weights_only(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "code": Path("x")}, path)
    with pytest.raises(CheckpointError, match="loads weights-only"):
        read_weights(path)


def test_a_missing_file_or_one_of_other_tensors_is_an_error_naming_it(tmp_path, raw):
    raw["codecs"]["tuned"]["init"] = {"file": "weights/base.pth"}
    message = problems(tmp_path, raw)
    assert (
        "codecs.tuned.init" in message and "weights/base.pth: initial weights not found" in message
    )
    (tmp_path / "weights").mkdir()
    save_state(tmp_path / "weights" / "base.pth", create_model(ARCH, N=8, M=16))
    message = problems(tmp_path, raw)
    assert "weights/base.pth does not fit codecs.tuned (bmshj2018-hyperprior, model_args" in message
    assert "g_a.6.weight (16, 8, 5, 5), not (8, 8, 5, 5)" in message


def test_zoo_weights_come_from_the_torch_hub_cache_and_are_never_downloaded(
    tmp_path, raw, monkeypatch
):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    raw["codecs"]["tuned"]["init"] = {"zoo": ARCH, "quality": 2}
    path, url = zoo_file(ARCH, 2, "mse")
    assert path == tmp_path / "hub" / "checkpoints" / "bmshj2018-hyperprior-2-93677231.pth.tar"
    assert url.endswith("/bmshj2018-hyperprior-2-93677231.pth.tar")
    message = problems(tmp_path, raw)
    assert path.name in message and url in message and f"put it at {path}" in message
    path.parent.mkdir(parents=True)
    save_state(path, create_model(ARCH, N=8, M=16), old_keys=True)
    message = problems(tmp_path, raw)
    assert "quality 2 has model_args {'N': 128, 'M': 192}" in message
    save_state(path, create_model(ARCH, N=8, M=8), old_keys=True)
    check_initial_weights(load(tmp_path, raw), ["tuned"], tmp_path)
    raw["codecs"]["tuned"]["init"] = {"zoo": ARCH, "quality": 9}
    assert "no bmshj2018-hyperprior mse quality 9 (qualities 1 to 8)" in problems(tmp_path, raw)


def test_icmflow_pipeline_checks_initial_weights_before_writing_dvc_yaml(tmp_path, raw):
    raw["codecs"]["tuned"]["init"] = {"file": "weights/missing.pth"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["--params", str(path), "pipeline"])
    assert result.exit_code == 1 and "weights/missing.pth" in result.output
    assert not (tmp_path / "dvc.yaml").exists()


def train_stages(tmp_path: Path, raw: dict) -> dict:
    """The train@ items of the dvc.yaml generated in project `tmp_path`."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    stages = yaml.safe_load(render(load_params(path), raw, tmp_path))["stages"]
    return {key: set(item.values()) for key, item in stages["train"]["foreach"].items()}


def test_train_of_an_init_entry_depends_on_what_it_starts_from(tmp_path, raw):
    deps = train_stages(tmp_path, raw)
    assert "models/base/checkpoint.pth.tar" in deps["tuned"]
    assert not any(d.startswith("models/") for d in deps["base"])
    raw["codecs"]["tuned"]["init"] = {"file": "weights/base.pth"}
    assert "weights/base.pth" in train_stages(tmp_path, raw)["tuned"]
    raw["codecs"]["tuned"]["init"] = {"zoo": ARCH, "quality": 1}  # in the torch hub cache
    assert not any(
        "checkpoint" in d or "weights" in d for d in train_stages(tmp_path, raw)["tuned"]
    )


def test_fine_tuned_codec_starts_from_exactly_the_base_weights(
    tmp_path, raw, sample_root, monkeypatch
):
    shutil.copytree(sample_root, tmp_path / "coco")
    raw["datasets"] = {"sample": {**raw["datasets"]["sample"], "root": str(tmp_path / "coco")}}
    raw["train"].update(steps=2, batch_size=2, patch_size=64, save_every=100)
    raw["masks"].update(n_workers=1, images_per_shard=4)
    raw["codecs"]["tuned"] = {**learned_entry("mse", 0.05), "init": "base"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["prepare", "sample"]).exit_code == 0
    result = runner.invoke(app, ["train", "tuned"])
    assert result.exit_code == 1 and "run `icmflow train base` first" in result.output
    assert runner.invoke(app, ["train", "base"]).exit_code == 0
    started = {}
    real = train_stage.train_codec

    def train_codec(model, *args, **kwargs):
        started.update({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train_stage, "train_codec", train_codec)
    result = runner.invoke(app, ["train", "tuned"])
    assert result.exit_code == 0, result.output
    base = Paths().checkpoint("base")
    assert_same_weights(started, torch.load(base, weights_only=True)["state_dict"])
    tuned = torch.load(Paths().checkpoint("tuned"), weights_only=True)["state_dict"]
    assert not torch.equal(tuned["g_a.0.weight"], started["g_a.0.weight"])  # and it trained
    provenance = json.loads((Paths().model("tuned") / "provenance.json").read_text())
    assert provenance["params"]["init"] == {
        "from": "base",
        "file": str(base),
        "sha256": file_digest(base),
    }
