import yaml
from typer.testing import CliRunner

from icmflow.pipeline.cli import app
from tests.conftest import REPO

runner = CliRunner()


def test_every_stage_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in ("sample", "prepare", "masks", "edges", "train", "encode", "evaluate", "report"):
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
    assert "not in params.yaml codecs" in result.output
