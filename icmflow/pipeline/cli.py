"""The `icmflow` command: one subcommand per pipeline stage (each also a DVC stage)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from icmflow.errors import InputError
from icmflow.pipeline.params import Params, ParamsError, load_params
from icmflow.pipeline.paths import Paths

app = typer.Typer(
    help="Image coding for machines: sample -> prepare -> masks (and edges) -> train -> "
    "encode -> evaluate -> report. Every command reads params.yaml; `dvc repro` runs them all.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_settings: dict[str, Path] = {}
Dataset = Annotated[str, typer.Argument(help="A key of `datasets` in params.yaml.")]


@app.callback()
def main(
    params: Annotated[Path, typer.Option(help="The project's params file.")] = Path("params.yaml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("distributed").setLevel(logging.WARNING)
    _settings["params"] = params


def _run(stage: str, *args: str) -> None:
    """Load params, run `icmflow.stages.<stage>.run`, and turn known failures into messages."""
    import importlib

    try:
        params: Params = load_params(_settings["params"])
        module = importlib.import_module(f"icmflow.stages.{stage}")
        module.run(params, Paths(), *args)
    except (ParamsError, InputError, FileNotFoundError, ValueError) as err:
        typer.secho(f"icmflow {stage}: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


@app.command()
def sample() -> None:
    """Write the sample dataset to data/sample: COCO, VisDrone, Cityscapes and YOLO layouts."""
    _run("sample")


@app.command()
def prepare(dataset: Dataset) -> None:
    """Read any dataset format, validate it, write its normalised COCO JSON to data/prepared."""
    _run("prepare", dataset)


@app.command()
def masks(dataset: Dataset) -> None:
    """Build object masks (zarr v3, sharded) for every split, on a dask cluster."""
    _run("masks", dataset)


@app.command()
def edges(dataset: Dataset) -> None:
    """Build SAM edge masks (SA-ICM) for every split, one SAM model per dask worker."""
    _run("edges", dataset)


Codec = Annotated[
    str,
    typer.Argument(help="A codec of `codecs` in params.yaml: <loss>-<lambda>, e.g. object-0.05."),
]


@app.command()
def train(codec: Codec) -> None:
    """Train one codec with its rate-distortion loss; save a CompressAI-style checkpoint."""
    _run("train", codec)


@app.command()
def encode(codec: Codec) -> None:
    """Encode the `encode` dataset split to real bitstreams and decoded PNGs."""
    _run("encode", codec)


@app.command()
def evaluate(codec: Codec) -> None:
    """Measure bpp, PSNR, object-region PSNR and MS-SSIM of one coded dataset."""
    _run("evaluate", codec)


@app.command()
def report() -> None:
    """Write the RD table, BD-rates and RD plots over all codecs to results/report."""
    _run("report")
