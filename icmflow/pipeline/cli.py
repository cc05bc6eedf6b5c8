"""The `icmflow` command: one subcommand per pipeline stage (each also a DVC stage)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Annotated

import typer

from icmflow.core.errors import IcmflowError
from icmflow.core.files import write_text
from icmflow.pipeline.paths import Paths

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # compressai

app = typer.Typer(
    help="Image coding for machines: sample -> prepare -> masks (and edges) -> train -> "
    "encode -> evaluate, task -> infer -> finetune -> report. Every command reads params.yaml; "
    "`icmflow pipeline` writes dvc.yaml from it and `dvc repro` runs them all.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_settings: dict = {}
Dataset = Annotated[str, typer.Argument(help="A key of `datasets` in params.yaml.")]


@app.callback()
def main(
    params: Annotated[Path, typer.Option(help="The project's params file.")] = Path("params.yaml"),
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Debug logging, and the traceback of any bug."),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("distributed").setLevel(logging.WARNING)
    _settings.update(params=params, verbose=verbose)


def _fail(command: str, message: str, code: int) -> None:
    typer.secho(f"icmflow {command}: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _guarded(command: str, action) -> None:
    """Run `action`; a user's problem prints its message, a bug says how to see its traceback."""
    try:
        action()
    except IcmflowError as err:
        _fail(command, str(err), 1)
    except Exception as err:
        if _settings.get("verbose"):
            raise
        _fail(
            command,
            f"unexpected {type(err).__name__}: {err}\n(a bug in icmflow or a library: rerun "
            f"with `icmflow -v {command} ...` to see where it happened)",
            2,
        )


def _run(stage: str, *args: str) -> None:
    """Load params and run `icmflow.stages.<stage>.run`."""

    def action() -> None:
        import importlib

        from icmflow.pipeline.params import load_params

        params = load_params(_settings["params"])
        importlib.import_module(f"icmflow.stages.{stage}").run(params, Paths(), *args)

    _guarded(stage, action)


@app.command()
def pipeline(
    check: Annotated[
        bool, typer.Option(help="Only check that dvc.yaml is current (exit 1 if not).")
    ] = False,
) -> None:
    """Write dvc.yaml from params.yaml and the code's imports (then run `dvc repro`)."""

    def action() -> None:
        import yaml

        from icmflow.pipeline.dvcfile import CHECK_OUT, CHECK_TEXT, render, stale
        from icmflow.pipeline.params import (
            ParamsError,
            check_initial_weights,
            check_registered,
            load_params,
        )

        path = _settings["params"]
        params = load_params(path)
        root = Path(path).resolve().parent
        if not check:  # --check runs before every repro: the stages using them check these
            check_registered(params)
            check_initial_weights(params, params.learned_codecs, root)
        text = render(params, yaml.safe_load(Path(path).read_text(encoding="utf-8")), root)
        target = root / "dvc.yaml"
        if check:
            if stale(target, text):
                raise ParamsError(
                    f"{target} does not match {path} and the code: run `icmflow pipeline`, "
                    "then `dvc repro` again (`make repro` does both)"
                )
            write_text(root / CHECK_OUT, CHECK_TEXT)
        elif stale(target, text):
            write_text(target, text)
            typer.echo(f"wrote {target}")
        else:
            typer.echo(f"{target} is current")

    _guarded("pipeline", action)


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
    typer.Argument(help="A key of `codecs` in params.yaml, e.g. meanscale-object-2."),
]


@app.command()
def train(codec: Codec) -> None:
    """Train one learned codec with its objective; save a CompressAI-style checkpoint.

    With `train.nproc` > 1 this command runs itself again under torchrun, on that many processes.
    """

    def action() -> None:
        from icmflow.pipeline.params import load_params
        from icmflow.runtime.distributed import launched, run_torchrun
        from icmflow.stages import train as stage

        params = load_params(_settings["params"])
        nproc = params.training(codec).nproc
        if nproc == 1 or launched():
            stage.run(params, Paths(), codec)
            return
        verbose = ["--verbose"] if _settings["verbose"] else []
        code = run_torchrun(nproc, ["--params", str(_settings["params"]), *verbose, "train", codec])
        if code:
            raise IcmflowError(
                f"training on {nproc} processes failed (torchrun exit {code}): their messages "
                "are above"
            )

    _guarded("train", action)


@app.command()
def encode(codec: Codec) -> None:
    """Code the `encode` dataset split to real bitstreams and decoded PNGs (any codec family)."""
    _run("encode", codec)


@app.command()
def evaluate(codec: Codec) -> None:
    """Measure bpp, PSNR, object-region PSNR and MS-SSIM of one coded dataset."""
    _run("evaluate", codec)


@app.command()
def bitmaps(first: Codec, second: Codec) -> None:
    """Bit-allocation heat maps of two learned codecs and their difference (bit_maps.pairs)."""
    _run("bitmaps", first, second)


Task = Annotated[str, typer.Argument(help="A key of `tasks` in params.yaml.")]
Source = Annotated[
    str, typer.Argument(help="`original` (the uncompressed images) or a key of `codecs`.")
]


@app.command()
def task(name: Task) -> None:
    """Train a task model on original images (tasks with `train:`, e.g. the demo's detector)."""
    _run("task", name)


@app.command()
def infer(source: Source, name: Task) -> None:
    """Run a task model on the original or a codec's coded images; score its predictions."""
    _run("infer", source, name)


@app.command()
def finetune(codec: Codec, name: Task) -> None:
    """Fine-tune a task model on a codec's coded training images; score it on its coded val."""
    _run("finetune", codec, name)


@app.command()
def report() -> None:
    """Write the RD table, BD-rates and RD plots over all codecs to results/report."""
    _run("report")
