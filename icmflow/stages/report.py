"""Stage `report`: the RD table, BD-rates against the anchor series, and RD plots; with task
models, the accuracy–rate table, its BD-rates and plots.

Every coded dataset gets its own RD set: `encode.dataset`'s in the report's folder, each of
`encode.datasets` in a folder of it named after the dataset (`results/report/<dataset>/`). A
dataset without annotations has no object PSNR (no plot, no BD-rate of it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from icmflow.core.errors import MissingInputError
from icmflow.core.files import atomic_directory, write_csv, write_json, write_text
from icmflow.evaluation.accuracy import COLUMNS as ACCURACY_COLUMNS
from icmflow.evaluation.accuracy import (
    HEADLINES,
    LOWER_IS_BETTER,
    accuracy_row,
    columns,
    sort_rows,
)
from icmflow.evaluation.plots import (
    QUALITY,
    UNDEFINED,
    plot_accuracy,
    plot_rd,
    plot_scalable,
)
from icmflow.evaluation.report import (
    COLUMNS,
    SCALABLE_COLUMNS,
    bd_rates,
    markdown_table,
    parameters_table,
    psnr_table,
    rd_table,
    scalable_table,
)
from icmflow.pipeline.coded_sets import arguments, has_objects
from icmflow.pipeline.freshness import command, current_inputs
from icmflow.pipeline.params import Params, is_scalable
from icmflow.pipeline.params.project import CodedSet
from icmflow.pipeline.params.tasks import ORIGINAL
from icmflow.pipeline.paths import Paths
from icmflow.pipeline.provenance import write_provenance


def _load(path: Path, command: str) -> dict:
    if not path.is_file():
        raise MissingInputError(f"{path}: missing; run `icmflow {command}` first")
    return json.loads(path.read_text())


def _load_metrics(paths: Paths, name: str, coded: CodedSet) -> dict:
    evaluate = f"evaluate {' '.join(arguments(name, coded))}"
    metrics = _load(paths.metrics(name, coded.on) / "metrics.json", evaluate)
    for key in QUALITY:  # JSON has no NaN: null stands for it
        metrics[key] = float("nan") if metrics[key] is None else metrics[key]
    return metrics


def _note(anchors: list[str], method: str) -> str:
    return (
        f"\n## BD-rate against {', '.join(f'`{a}`' for a in anchors)} ({method})\n\n"
        "Negative: the test series needs fewer bits for the same quality.\n\n"
    )


def _accuracy_rows(params: Params, paths: Paths, rows: list[dict], task: str) -> list[dict]:
    sources = {r["codec"]: r for r in rows}
    original = {"codec": ORIGINAL, "family": ORIGINAL, "series": ORIGINAL, "setting": ""}
    found = []
    for source in (ORIGINAL, *params.codecs):
        fields = (
            original | {"bpp": math.nan}
            if source == ORIGINAL
            else {k: sources[source][k] for k in ("codec", "family", "series", "setting", "bpp")}
        )
        accuracy = _load(
            paths.predictions(source, task) / "accuracy.json", f"infer {source} {task}"
        )
        if "bpp" in accuracy:  # predicted from machine bitstreams: at their rate
            fields = {**fields, "bpp": accuracy["bpp"], "setting": f"{fields['setting']} machine"}
        found.append(accuracy_row(task, "pre-trained", fields, accuracy))
        if (source, task) in params.finetuned():
            tuned = _load(
                paths.finetuned(source, task) / "accuracy.json", f"finetune {source} {task}"
            )
            found.append(accuracy_row(task, "fine-tuned", fields, tuned))
    return sort_rows(found)


def _write_accuracy(params: Params, paths: Paths, rows: list[dict], out: Path) -> None:
    """accuracy.csv / .md, accuracy_bd_rate.json and one plot per task and headline metric."""
    options, text, everything, bd = params.report, ["# Accuracy–rate\n"], [], []
    for task, entry in params.tasks.items():
        task_rows = _accuracy_rows(params, paths, rows, task)
        metrics = HEADLINES[entry.kind]
        everything += task_rows
        write_csv(out / f"accuracy_{task}.csv", task_rows, columns(entry.kind))
        text += [f"\n## {task} ({entry.kind}, {entry.backend})\n\n"]
        text += [markdown_table(task_rows, columns(entry.kind))]
        for model in ("pre-trained", "fine-tuned"):
            curves = [r for r in task_rows if r["model"] == model and r["family"] != ORIGINAL]
            if curves:
                found = bd_rates(
                    curves, options.anchors, options.bd_method, metrics, LOWER_IS_BETTER
                )
                bd += [{"task": task, "model": model, **b} for b in found]
        for metric in metrics:
            plot_accuracy(
                task_rows, metric, out / f"accuracy_{task}_{metric}.png", f"{task}: {metric}"
            )
    metrics = dict.fromkeys(m for entry in params.tasks.values() for m in HEADLINES[entry.kind])
    write_csv(out / "accuracy.csv", everything, (*ACCURACY_COLUMNS, *metrics))
    write_json(out / "accuracy_bd_rate.json", bd)
    text += [
        _note(options.anchors, options.bd_method).replace("same quality", "same accuracy"),
        markdown_table(
            [{**b, "bd_rate_percent": _nan(b["bd_rate_percent"])} for b in bd],
            ("task", "model", "test", "anchor", "quality", "bd_rate_percent", "note"),
        ),
    ]
    write_text(out / "accuracy.md", "".join(text))


def _write_bit_map_links(params: Params, paths: Paths, out: Path) -> None:
    """bit_allocation.md: a link to every `bitmaps@` stage's maps, relative to the report."""
    lines = ["# Bit allocation\n\n"]
    for key in params.bit_map_pairs():
        index = paths.bit_maps(key) / "index.md"
        if not index.is_file():
            raise MissingInputError(f"{index}: missing; run `icmflow bitmaps` for {key} first")
        lines.append(f"- [{key}]({Path('..') / 'bitmaps' / key / 'index.md'})\n")
    write_text(out / "bit_allocation.md", "".join(lines))


def _write_scalable(params: Params, paths: Paths, rows: list[dict], out: Path) -> None:
    """scalable.csv / .md (the papers' Tables I and II over m) and the Fig. 6 plots."""
    found = []
    for name, entry in params.codecs.items():
        if is_scalable(entry):
            metrics = _load_metrics(paths, name, params.coded_set())
            found.append(
                {
                    **metrics,
                    "series": entry.series_name,
                    "setting": entry.setting,
                    "mode": entry.mode,
                    "m": entry.m,
                    "human_parameters": metrics["layers"]["human_parameters"],
                }
            )
    table = scalable_table(found)
    write_csv(out / "scalable.csv", table, SCALABLE_COLUMNS)
    write_text(
        out / "scalable.md",
        "# Scalable coding for humans and machines\n\nHuman images; bpp counts both layers' "
        "files, additional_bpp the human layer's alone, machine_bpp the machine layer's "
        "(its images are the machine codec's coded dataset).\n\n"
        + markdown_table(table, SCALABLE_COLUMNS)
        + "\n## Human-layer parameters (Table I)\n\n"
        + parameters_table(table)
        + "\n## PSNR (dB) of the human images per λ (Table II)\n\n"
        + psnr_table(table),
    )
    for quality in ("psnr", "ms_ssim"):
        plot_scalable(
            rows,
            table,
            quality,
            out / f"scalable_{quality}_bpp.png",
            f"Human images: {QUALITY[quality]} against rate",
        )


def _undefined_note(rows: list[dict], qualities: tuple[str, ...] = tuple(QUALITY)) -> str:
    """A line for each of the `qualities` no codec has a finite value of (its plot says so
    too)."""
    return "".join(
        f"\n{QUALITY[quality]} is undefined for every codec: {UNDEFINED[quality]}.\n"
        for quality in qualities
        if rows and not any(math.isfinite(r[quality]) for r in rows)
    )


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _rd_rows(params: Params, paths: Paths, coded: CodedSet) -> list[dict]:
    """The RD table of one coded dataset: a row per codec coding it."""
    return rd_table(
        [
            {
                **_load_metrics(paths, name, coded),
                "family": params.codec(name).family,
                "series": params.codec(name).series_name,
                "setting": params.codec(name).setting,
            }
            for name in coded.codecs
        ]
    )


def _inputs(params: Params, paths: Paths) -> list[Path]:
    """Every file the report reads (each one's absence named with the command that makes
    it): metrics, task accuracies, bit-map indexes."""
    needed: dict[Path, str] = {}
    for coded in params.coded_sets():
        for name in coded.codecs:
            evaluate = f"evaluate {' '.join(arguments(name, coded))}"
            needed[paths.metrics(name, coded.on) / "metrics.json"] = evaluate
    for task in params.tasks:
        for source in (ORIGINAL, *params.codecs):
            needed[paths.predictions(source, task) / "accuracy.json"] = f"infer {source} {task}"
    for codec, task in params.finetuned():
        needed[paths.finetuned(codec, task) / "accuracy.json"] = f"finetune {codec} {task}"
    for key, (first, second) in params.bit_map_pairs().items():
        needed[paths.bit_maps(key) / "index.md"] = f"bitmaps {first} {second}"
    for path, stage in needed.items():
        if not path.is_file():
            raise MissingInputError(f"{path}: missing; run `icmflow {stage}` first")
    return list(needed)


def _qualities(params: Params, coded: CodedSet) -> tuple[str, ...]:
    """The qualities of a coded dataset: no object PSNR without annotations."""
    return tuple(q for q in QUALITY if q != "object_psnr" or has_objects(params, coded))


def _rd_notes(params: Params, coded: CodedSet) -> str:
    """How bpp and the qualities are defined for `coded`."""
    objects = (
        "object PSNR averages over images that have objects"
        if has_objects(params, coded)
        else f"dataset {coded.dataset} has no annotations, so no object PSNR"
    )
    text = (
        "\nbpp = total bitstream bits / total pixels; PSNR and MS-SSIM are per-image "
        f"means; {objects}.\n"
    )
    if coded.resize is not None:
        resize = coded.resize
        text += (
            f"\nImages resized to a shorter edge of {resize.shorter_edge} px (`resize@"
            f"{coded.dataset}`), originals and every codec alike"
            + (
                f"; each coded padded to a multiple of {resize.pad_multiple}, the padding "
                "cropped from the decoded image and not counted in bpp"
                if resize.pad_multiple > 1
                else ""
            )
            + ".\n"
        )
    return text


def _write_rd(
    params: Params, coded: CodedSet, rows: list[dict], out: Path, others: list[CodedSet]
) -> None:
    """The RD set of one coded dataset in `out`: rd.csv (and one per series), bd_rate.json,
    rd.md (linking the `others`' sets) and a plot per quality."""
    options = params.report
    qualities = _qualities(params, coded)
    series = {r["series"] for r in rows}
    anchors = [a for a in options.anchors if a in series]  # codecs may code a dataset or not
    bd = bd_rates(rows, anchors, options.bd_method, qualities)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "rd.csv", rows, COLUMNS)
    for name in params.series():  # one file per series, for dvc.yaml's plots
        if name in series:
            write_csv(out / f"rd_{name}.csv", [r for r in rows if r["series"] == name], COLUMNS)
    write_json(out / "bd_rate.json", bd)
    bd_rows = [{**b, "bd_rate_percent": _nan(b["bd_rate_percent"])} for b in bd]
    title = "# Rate–distortion" + ("" if coded.primary else f": {coded.dataset} ({coded.split})")
    links = "".join(f"- [{o.dataset}]({o.dataset}/rd.md) ({o.split})\n" for o in others)
    write_text(
        out / "rd.md",
        f"{title}\n\n"
        + markdown_table(rows, COLUMNS)
        + _note(anchors or options.anchors, options.bd_method)
        + markdown_table(bd_rows, ("test", "anchor", "quality", "bd_rate_percent", "note"))
        + _rd_notes(params, coded)
        + _undefined_note(rows, qualities)
        + (f"\n## Other coded datasets\n\n{links}" if links else ""),
    )
    for quality in qualities:
        plot_rd(rows, quality, out / f"{quality}_bpp.png", f"{QUALITY[quality]} against rate")


def run(params: Params, paths: Paths) -> None:
    read = _inputs(params, paths)
    inputs = current_inputs(paths.root, read)
    primary, *others = params.coded_sets()
    rows = _rd_rows(params, paths, primary)
    options = params.report
    with atomic_directory(paths.report) as out:
        _write_rd(params, primary, rows, out, others)
        for coded in others:
            _write_rd(params, coded, _rd_rows(params, paths, coded), out / coded.dataset, [])
        if params.tasks:
            _write_accuracy(params, paths, rows, out)
        if any(is_scalable(entry) for entry in params.codecs.values()):
            _write_scalable(params, paths, rows, out)
        if params.bit_maps.pairs:
            _write_bit_map_links(params, paths, out)
        write_provenance(
            out,
            "report",
            {
                "codecs": list(params.codecs),
                "tasks": list(params.tasks),
                "report": options.model_dump(),
                "datasets": {c.dataset: c.split for c in params.coded_sets()},
            },
            command=command(params, "report"),
            inputs=inputs,
        )
