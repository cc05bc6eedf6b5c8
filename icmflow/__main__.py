"""`python -m icmflow`: the `icmflow` command (what torchrun runs on each process)."""

from icmflow.pipeline.cli import app

app(prog_name="icmflow")
