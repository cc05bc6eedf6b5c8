"""The auxiliary-loss encoder against the same codec without its branch, in one run.

Runs task-driven/params.yaml's stages in a temporary project (sample → prepare → masks → task →
train → encode → evaluate → infer → report): one recognition model (the sample's YOLO, trained
here on the original train images, or `--weights`, e.g. the demo's
models/tasks/yolo-shapes/weights.pt), the same data, seed and steps for both series, one codec per
λ of `--lambdas` for `task-loss` (eq. 4, no branch) and `aux-loss` (eq. 5). Prints bpp and
mAP50-95 / mAP50 of every codec (real bits, predictions on the decoded val images) and the
BD-rate at equal accuracy of aux-loss against task-loss (negative: the branch saves bits);
`--keep` keeps the results, with the bit maps of the middle λ's two codecs.

    python benchmarks/objectives.py --steps 300 --lambdas 0.01 0.04 0.16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from icmflow.pipeline.params import load_params
from icmflow.pipeline.paths import Paths

REPO = Path(__file__).resolve().parents[1]
TASK = "yolo-shapes"
SERIES = {"task": "task-loss", "aux": "aux-loss"}
ANCHOR, TEST = "bmshj2018-hyperprior-task-loss", "bmshj2018-hyperprior-aux-loss"


def project_params(args: argparse.Namespace) -> dict:
    params = yaml.safe_load((REPO / "task-driven" / "params.yaml").read_text())
    params["sample"].update(train_images=args.train_images, val_images=args.val_images)
    params["train"].update(steps=args.steps, lr_milestones=[int(args.steps * 0.8)])
    template = params["codecs"]["aux-1"]  # the branch's widths as the project trains it
    codecs = {}
    for prefix, objective in SERIES.items():
        arguments = {"task": TASK, "task_options": {"conf": args.conf}}
        if objective == "aux-loss":
            arguments = {**template["objective_args"], **arguments, "alpha": args.alpha}
        for i, lmbda in enumerate(args.lambdas, 1):
            codecs[f"{prefix}-{i}"] = {
                **template,
                "objective": objective,
                "lmbda": lmbda,
                "objective_args": arguments,
            }
    params["codecs"] = codecs
    params["report"]["anchors"] = [ANCHOR]
    middle = (len(args.lambdas) + 1) // 2
    params["bit_maps"]["pairs"] = [[f"task-{middle}", f"aux-{middle}"]]
    if args.weights is not None:
        params["tasks"][TASK] = {
            "kind": "detection",
            "backend": "ultralytics",
            "weights": str(args.weights.resolve()),
            "input_size": params["tasks"][TASK]["input_size"],
        }
    else:
        params["tasks"][TASK]["train"]["epochs"] = args.epochs
    return params


def run_stages(root: Path) -> dict[str, float]:
    """Every stage in order; returns seconds per stage kind."""
    from icmflow.stages import (
        bitmaps,
        encode,
        evaluate,
        infer,
        masks,
        prepare,
        report,
        sample,
        task,
        train,
    )

    params, paths = load_params(root / "params.yaml"), Paths()
    times: dict[str, float] = {}

    def timed(kind: str, stage, *names: str) -> None:
        start = time.perf_counter()
        stage.run(params, paths, *names)
        times[kind] = times.get(kind, 0.0) + time.perf_counter() - start

    timed("sample", sample)
    timed("prepare", prepare, "sample")
    timed("masks", masks, "sample")
    if params.task(TASK).train is not None:
        timed("task", task, TASK)
    for codec in params.codecs:
        timed("train", train, codec)
        timed("encode", encode, codec)
        timed("evaluate", evaluate, codec)
    for source in ("original", *params.codecs):
        timed("infer", infer, source, TASK)
    for first, second in params.bit_map_pairs().values():
        timed("bitmaps", bitmaps, first, second)
    timed("report", report)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.01, 0.04, 0.16])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--conf", type=float, default=0.1, help="pseudo-label score threshold")
    parser.add_argument("--train-images", type=int, default=24)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=100, help="YOLO epochs (no --weights)")
    parser.add_argument("--weights", type=Path, help="a trained YOLO .pt instead of training")
    parser.add_argument("--keep", type=Path, help="copy the project's results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="icmflow-objectives-") as name:
        root = Path(name)
        (root / "params.yaml").write_text(yaml.safe_dump(project_params(args), sort_keys=False))
        cwd = Path.cwd()
        os.chdir(root)
        try:
            times = run_stages(root)
        finally:
            os.chdir(cwd)
        report = root / "results" / "report"
        rows = [r for r in _csv(report / f"accuracy_{TASK}.csv") if r["model"] == "pre-trained"]
        bd = json.loads((report / "accuracy_bd_rate.json").read_text())
        if args.keep:
            shutil.copytree(root / "results", args.keep, dirs_exist_ok=True)
    print(
        f"{args.train_images} train / {args.val_images} val sample images, {args.steps} steps "
        f"per codec, λ {args.lambdas}, α {args.alpha}, pseudo-label conf {args.conf}"
    )
    print(f"{'codec':12} {'series':32} {'bpp':>8} {'mAP50-95':>9} {'mAP50':>7}")
    for r in rows:
        print(
            f"{r['codec']:12} {r['series']:32} {_num(r['bpp']):>8} "
            f"{_num(r['bbox_map']):>9} {_num(r['bbox_map50']):>7}"
        )
    for b in bd:
        if b["test"] == TEST and b["anchor"] == ANCHOR:
            value = b["bd_rate_percent"]
            shown = "n/a" if value is None else f"{value:+.1f} %"
            print(f"BD-rate aux-loss vs task-loss at equal {b['quality']}: {shown} {b['note']}")
    print("seconds per stage kind:", {k: round(v, 1) for k, v in times.items()})


def _csv(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _num(value: str) -> str:
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


if __name__ == "__main__":
    main()
