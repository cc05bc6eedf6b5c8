"""Running `icmflow` commands in-process."""

from __future__ import annotations

from typer.testing import CliRunner

from icmflow.pipeline.cli import app

runner = CliRunner()


def ok(*command: str) -> None:
    """Run `icmflow <command>`; it must exit 0."""
    result = runner.invoke(app, list(command))
    assert result.exit_code == 0, (command, result.output)
