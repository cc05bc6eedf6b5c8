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
    assert "not in params.yaml codecs" in result.output


def test_a_bug_says_how_to_see_its_traceback_and_v_shows_it(tmp_path, monkeypatch):
    from icmflow.stages import report

    def broken(params, paths):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(report, "run", broken)
    params = str(REPO / "params.yaml")
    result = runner.invoke(app, ["--params", params, "report"])
    assert result.exit_code == 2
    assert "unexpected ZeroDivisionError: division by zero" in result.output
    assert "icmflow -v report" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["-v", "--params", params, "report"])
    assert isinstance(result.exception, ZeroDivisionError)  # raised: Python prints the traceback


def test_pipeline_writes_dvc_yaml_and_check_refuses_a_stale_one(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert runner.invoke(app, ["--params", str(path), "pipeline", "--check"]).exit_code == 1
    result = runner.invoke(app, ["--params", str(path), "pipeline"])
    assert result.exit_code == 0 and (tmp_path / "dvc.yaml").is_file()
    assert runner.invoke(app, ["--params", str(path), "pipeline", "--check"]).exit_code == 0
    assert (tmp_path / "data" / "pipeline-checked.txt").is_file()
    params["codecs"]["jpeg-q33"] = {"family": "jpeg", "quality": 33}
    path.write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["--params", str(path), "pipeline", "--check"])
    assert result.exit_code == 1 and "does not match" in result.output
