"""The real-data study (studies/coco) run elsewhere than beside ../shared: on a device machine.

Writes a DVC project of its own, `studies/coco-run/` (git-ignored), whose params.yaml is a study
params file (default `studies/coco/params-gpu.yaml`) with its data and detectors read from
`ICMFLOW_SAMPLES` and the `models/` folder beside it; then runs `icmflow pipeline` and `dvc
repro` there, timed, and copies the report's tables to OUT. `--smoke` runs it at toy size (a few
images of each split, two training steps, three learned codecs and JPEG, both detectors, one
fine-tuning): what `SMOKE=1 benchmarks/device.sh` runs on a CPU to check the script, and what
`tests/test_study_coco.py` runs through `dvc repro` beside a copy of the project.

    python benchmarks/study.py results/device/study                       # the GPU study
    python benchmarks/study.py /tmp/smoke/study --smoke                   # toy size, any machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "coco"
SHARED = "../../../shared"
"""Where the study's params find ../shared beside the repository (from studies/<name>/)."""
SPLITS = {
    "train": ("coco-train160", "instances_train2017.json", 3),
    "val": ("coco-val158", "instances_val2017.json", 2),
}
"""Each split's sample folder, annotation file and the images a toy run keeps (a crowd region
among the val ones)."""
WEIGHTS = ("yolov5n.pt", "yolov8n_full_integer_quant.tflite")
TOY_CODECS = ("base", "mse-2", "object-2", "jpeg-q20")
"""The codecs a toy run keeps: the base, an MSE and an object codec fine-tuned from it, JPEG."""


def shared_subset(samples: Path, models: Path, shared: Path) -> dict[str, list[int]]:
    """A few images of each COCO sample of `samples` under `shared/samples`, in the sample's own
    layout, and the detectors of `models` linked under `shared/models`; the image ids kept."""
    kept = {}
    for split, (folder, annotation_file, count) in SPLITS.items():
        data = json.loads((samples / folder / annotation_file).read_text())
        crowd = {a["image_id"] for a in data["annotations"] if a["iscrowd"]}
        images = sorted(data["images"], key=lambda i: (i["id"] not in crowd, i["id"]))[:count]
        ids = {i["id"] for i in images}
        data["images"] = images
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        target = shared / "samples" / folder
        (target / "images").mkdir(parents=True)
        for image in images:
            shutil.copy2(samples / folder / "images" / image["file_name"], target / "images")
        (target / annotation_file).write_text(json.dumps(data))
        kept[split] = sorted(ids)
    (shared / "models").mkdir()
    for name in WEIGHTS:
        (shared / "models" / name).symlink_to((models / name).resolve())
    return kept


def toy(raw: dict) -> None:
    """Shrink a study's params in place to toy size (seconds per stage on a CPU)."""
    raw["sample"].update(train_images=2, val_images=1)
    raw["masks"].update(images_per_shard=2, n_workers=1)
    raw["encode"].update(n_workers=1, device="cpu")
    raw["train"].update(
        steps=2, batch_size=2, patch_size=64, lr_milestones=[1], save_every=100, device="cpu"
    )
    raw["codecs"] = {name: raw["codecs"][name] for name in TOY_CODECS}
    for entry in raw["codecs"].values():
        if entry["family"] == "learned":
            entry["model_args"].update(N=8, M=8)
            entry.get("train", {}).update(steps=2, lr_milestones=[1])
    for task in raw["tasks"].values():
        task["device"] = "cpu"
    raw["tasks"]["yolov5n"]["finetune"].update(codecs=["object-2"], epochs=1, batch_size=2)
    raw["bit_maps"].update(pairs=[["mse-2", "object-2"]], images=1)


def relocated(raw: dict, shared: Path) -> None:
    """Point the study's data and detector paths (`../../../shared/...`) at `shared`."""
    for entry in raw["datasets"].values():
        entry["root"] = entry["root"].replace(SHARED, str(shared.resolve()), 1)
    for task in raw["tasks"].values():
        task["weights"] = task["weights"].replace(SHARED, str(shared.resolve()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the timings and the report's tables")
    parser.add_argument("--params", type=Path, default=STUDY / "params-gpu.yaml")
    parser.add_argument("--smoke", action="store_true", help="toy size, a few images")
    args = parser.parse_args()
    samples = Path(os.environ.get("ICMFLOW_SAMPLES", REPO.parent / "shared" / "samples"))
    shared = samples.resolve().parent
    project = STUDY.with_name("coco-run")
    shutil.rmtree(project, ignore_errors=True)
    (project / ".dvc").mkdir(parents=True)
    # without git: the project is git-ignored (DVC refuses a git-ignored dvc.yaml), and a device
    # machine's copy of the working tree may have no .git at all
    config = (STUDY / ".dvc" / "config").read_text()
    (project / ".dvc" / "config").write_text(config.replace("[core]", "[core]\n    no_scm = true"))
    raw = yaml.safe_load(args.params.read_text())
    if args.smoke:
        shared = project / "shared"
        shared_subset(samples, samples.parent / "models", shared)
        toy(raw)
    relocated(raw, shared)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    args.out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    params = str(project.relative_to(REPO) / "params.yaml")
    subprocess.run(["icmflow", "--params", params, "pipeline"], cwd=REPO, env=env, check=True)
    start = time.perf_counter()
    with (args.out / "repro.log").open("w") as log:
        repro = subprocess.run(["dvc", "repro"], cwd=project, env=env, stdout=log, stderr=log)
    seconds = time.perf_counter() - start
    report = project / "results" / "report"
    for name in ("rd.md", "accuracy.md"):
        if (report / name).is_file():
            shutil.copy2(report / name, args.out / name)
    print(f"dvc repro of {args.params.name}: exit {repro.returncode}, {seconds:.0f} s wall")
    if (report / "rd.md").is_file():
        print((report / "rd.md").read_text())
    sys.exit(repro.returncode)


if __name__ == "__main__":
    main()
