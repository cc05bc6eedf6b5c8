from pathlib import Path

import yaml
from typer.testing import CliRunner

from icmflow.pipeline.cli import app
from tests.helpers.project import REPO

runner = CliRunner()


def test_every_stage_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    stages = ("pipeline", "sample", "prepare", "masks", "edges", "train", "encode", "evaluate")
    for stage in (*stages, "report"):
        assert stage in result.output
        sub = runner.invoke(app, [stage, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "Usage" in sub.output


def test_invalid_params_fail_with_a_message(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["masks"]["crowd"] = "sometimes"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["--params", str(path), "masks", "sample"])
    assert result.exit_code == 1
    assert "masks.crowd" in result.output and "sometimes" in result.output


def test_unknown_codec_fails_with_a_message():
    result = runner.invoke(app, ["--params", str(REPO / "params.yaml"), "train", "object-9"])
    assert result.exit_code == 1
    assert f"not in {REPO / 'params.yaml'} codecs" in result.output


def test_errors_name_the_params_file_given(tmp_path, monkeypatch):
    """With `--params other.yaml`, every message about params names other.yaml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())  # not this one
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    Path("other.yaml").write_text(yaml.safe_dump(params))
    params["codecs"]["meanscale-mse-1"]["arch"] = "no-such-arch"
    params["codecs"]["meanscale-mse-1"].pop("init")  # else: another arch than its base's
    Path("broken.yaml").write_text(yaml.safe_dump(params))
    cases = {
        ("train", "object-9"): "codec 'object-9' is not in other.yaml codecs",
        ("edges", "sample"): "dataset 'sample' is not in other.yaml edges.datasets",
        ("bitmaps", "jpeg-q5", "jpeg-q10"): "is not listed in other.yaml bit_maps.pairs",
        ("infer", "original", "nope"): "task 'nope' is not in other.yaml tasks",
        ("prepare", "nope"): "dataset 'nope' is not in other.yaml datasets",
    }
    for argv, message in cases.items():
        result = runner.invoke(app, ["--params", "other.yaml", *argv])
        assert result.exit_code == 1, result.output
        assert message in result.output and "params.yaml" not in result.output, argv
    result = runner.invoke(app, ["--params", "broken.yaml", "pipeline"])
    assert result.exit_code == 1
    assert "broken.yaml is invalid:\n  codecs.meanscale-mse-1.arch: unknown" in result.output
