"""The `icmflow` command: one subcommand per pipeline stage (each also a DVC stage)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Annotated

import typer

from icmflow.core.errors import IcmflowError
from icmflow.core.files import write_text
from icmflow.pipeline.paths import Paths

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


_STORAGE_ERRORS = {
    errno.ENOSPC: "no space left on the device: free some (or write the project elsewhere)",
    errno.EDQUOT: "disk quota exceeded: free some space (or write the project elsewhere)",
    errno.EROFS: "the file system is read-only: run where the project can be written",
    errno.EACCES: "permission denied: give this user access (write access, for an output)",
    errno.EPERM: "not permitted: give this user access (write access, for an output)",
}
"""File system failures a user fixes (a full disk, a read-only folder) and how."""


def _storage_problem(err: OSError) -> str | None:
    """The one-line message of a failure the user can fix; None for anything else."""
    fix = _STORAGE_ERRORS.get(err.errno)  # type: ignore[arg-type]
    if fix is None:
        return None
    where = err.filename or "a file"
    return f"{where}: {fix}, then run this again (nothing half-written was kept)"


def _guarded(command: str, action) -> None:
    """Run `action`; a user's problem prints its message, a bug says how to see its traceback."""
    try:
        action()
    except IcmflowError as err:
        _fail(command, str(err), 1)
    except OSError as err:
        if (problem := _storage_problem(err)) is None:
            _bug(command, err)
        _fail(command, problem, 1)
    except Exception as err:
        _bug(command, err)


def _bug(command: str, err: Exception) -> None:
    """Say that `err` is a bug and how to see its traceback (with -v: raise it)."""
    if _settings.get("verbose"):
        raise err
    _fail(
        command,
        f"unexpected {type(err).__name__}: {err}\n(a bug in icmflow or a library: rerun "
        f"with `icmflow -v {command} ...` to see where it happened)",
        2,
    )


def _run(stage: str, *args: str | None) -> None:
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
        elif stale(target, text):
            write_text(target, text)
            typer.echo(f"wrote {target}")
        else:
            typer.echo(f"{target} is current")
        write_text(root / CHECK_OUT, CHECK_TEXT)  # so that `dvc repro --dry` finds it

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


CodedDataset = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="A dataset of `encode.datasets` (default: `encode.dataset`, the primary one).",
    ),
]


@app.command()
def encode(codec: Codec, dataset: CodedDataset = None) -> None:
    """Code the `encode` dataset split to real bitstreams and decoded PNGs (any codec family)."""
    _run("encode", codec, dataset)


@app.command()
def evaluate(codec: Codec, dataset: CodedDataset = None) -> None:
    """Measure bpp, PSNR, object-region PSNR and MS-SSIM of one coded dataset."""
    _run("evaluate", codec, dataset)


@app.command()
def resize(dataset: Dataset) -> None:
    """Resize a coded dataset's originals (its `resize`: shorter edge), with their annotations
    and object masks, once for every codec and every comparison."""
    _run("resize", dataset)


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


@app.command()
def decode(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="Bitstream files, folders of them, or coded datasets (data/coded/<codec>) or "
            "their splits (data/coded/<codec>/bitstreams/<split>)."
        ),
    ],
    codec: Annotated[
        str | None,
        typer.Option(
            help="The codec: its entry in params.yaml or its checkpoint's path. Default: a coded "
            "dataset's own codec; .jpg/.webp/.avif/.heic files need none."
        ),
    ] = None,
    machine: Annotated[
        Path | None,
        typer.Option(help="A scalable codec given by checkpoint: its machine layer's checkpoint."),
    ] = None,
    machine_bitstreams: Annotated[
        Path | None,
        typer.Option(
            help="A scalable codec's files outside a coded dataset: the folder of their "
            "machine-layer files (same names)."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Of a coded dataset, this split only (default: all).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the PNGs go.")] = Path("decoded"),
) -> None:
    """Decode bitstream files to PNGs (any codec family; a scalable codec's two layers).

    Not a DVC stage. Learned bitstreams are verified as encode verifies them: a file decoded
    with another checkpoint, or damaged, is an error naming it.
    """

    def action() -> None:
        from icmflow.pipeline.look import codec_of
        from icmflow.pipeline.look import decode as decode_all

        decoded = decode_all(
            sources,
            codec=codec,
            codec_of=lambda value: codec_of(value, _settings["params"], machine),
            machine_bitstreams=machine_bitstreams,
            split=split,
            out=out,
        )
        typer.echo(f"decoded {len(decoded)} file(s) to {out}/")

    _guarded("decode", action)


@app.command()
def show(
    path: Annotated[
        Path,
        typer.Argument(
            help="A mask store (data/masks/<dataset>/<kind>/<split>.zarr), a coded dataset "
            "(data/coded/<codec>), or a decoded image with --original."
        ),
    ],
    original: Annotated[
        Path | None, typer.Option(help="The original of the decoded image PATH.")
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="The prepared dataset JSON whose images to draw on (default: the one the store "
            "or coded dataset records)."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="A coded dataset's split (default: val, else the first).")
    ] = None,
    images: Annotated[int, typer.Option(min=1, help="How many images.")] = 8,
    out: Annotated[
        Path | None, typer.Option(help="Where the PNGs go (default: shown/<what>).")
    ] = None,
) -> None:
    """Write PNGs to look at: masks over their images, coded images beside their originals.

    Not a DVC stage. Mask pictures: each image and the same with its object mask (red) or SAM
    edge mask (green). Coded pictures: original, decoded (bpp, PSNR) and their error.
    """

    def action() -> None:
        from icmflow.pipeline.look import show_coded, show_masks, show_pair

        if original is not None:
            target = show_pair(path, original, out)
        elif path.suffix == ".zarr" or (path / "zarr.json").is_file():
            target = show_masks(path, dataset=dataset, images=images, out=out)
        elif (path / "annotations").is_dir():
            target = show_coded(path, split=split, dataset=dataset, images=images, out=out)
        else:
            raise IcmflowError(
                f"{path}: not a mask store (.zarr), a coded dataset (data/coded/<codec>), nor a "
                "decoded image given with --original"
            )
        typer.echo(f"wrote {target}")

    _guarded("show", action)


@app.command()
def init(
    root: Annotated[Path, typer.Option(help="The dataset's folder (e.g. photos/).")],
    format: Annotated[
        str, typer.Option(help="Its format: images (no annotations), coco, yolo, ...")
    ] = "images",
    name: Annotated[
        str | None, typer.Option(help="The dataset's name (default: the folder's).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing params file.")] = False,
) -> None:
    """Write a minimal, commented params.yaml (--params) for your own dataset.

    One dataset (splits found in its format's usual layout), the training defaults written out,
    one learned codec and JPEG anchors. Then `icmflow pipeline && dvc repro`.
    """

    def action() -> None:
        import re

        from icmflow.pipeline.params import load_params
        from icmflow.pipeline.starter import starter_params

        path = Path(_settings["params"])
        if path.exists() and not force:
            raise IcmflowError(
                f"{path}: exists; pass --force to overwrite it, or --params elsewhere"
            )
        key = name or re.sub(r"[^A-Za-z0-9_-]+", "-", root.absolute().name).strip("-") or "data"
        write_text(path, starter_params(format=format, root=root.as_posix(), name=key))
        load_params(path)
        typer.echo(f"wrote {path}; next: icmflow --params {path} pipeline && dvc repro")

    _guarded("init", action)


@app.command("params")
def params_command(
    resolved: Annotated[
        bool,
        typer.Option(help="Print the whole effective configuration, every default filled in."),
    ] = False,
) -> None:
    """Check params.yaml (schema, cross-references, registries); --resolved prints it all."""

    def action() -> None:
        import yaml

        from icmflow.pipeline.params import check_registered, load_params
        from icmflow.pipeline.params.resolved import resolved as resolve

        params = load_params(_settings["params"])
        check_registered(params)
        if resolved:
            typer.echo(yaml.safe_dump(resolve(params), sort_keys=False, width=100), nl=False)
        else:
            typer.echo(
                f"{_settings['params']} is valid: {len(params.datasets)} datasets, "
                f"{len(params.codecs)} codecs, {len(params.tasks)} tasks"
            )

    _guarded("params", action)
