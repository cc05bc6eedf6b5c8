"""Task accuracy on a dataset: icmflow's infer + score against ultralytics' own `val`.

Both run the same model on the same images in this process, one after the other, `--repeats`
times each (the best time counts): icmflow reads the images, predicts with the ultralytics
backend and scores with pycocotools' COCOeval; ultralytics `val` loads, predicts and scores with
its own metric. Prints images/s of both, the ratio, and both mAP50-95 / mAP50.

    python benchmarks/tasks.py  # the real YOLOv8n TFLite on ../shared/samples/coco8-yolo val
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from icmflow.core.errors import ProblemLog
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.tasks.accuracy import predict_dataset, score_predictions
from icmflow.tasks.classes import class_mapping
from icmflow.vision.tasks.base import TASK_BACKENDS, TaskModelSpec
from icmflow.vision.tasks.offline import import_ultralytics

SHARED = Path(__file__).resolve().parents[2] / "shared"


def yolo_copy(dataset: Path, names_yaml: Path, tmp: Path) -> Path:
    """A copy of a YOLO dataset (ultralytics writes label caches beside labels), its data YAML."""
    root = tmp / "data"
    shutil.copytree(dataset, root)
    names = yaml.safe_load(names_yaml.read_text())["names"]
    config = {"path": str(root), "train": "images/val", "val": "images/val", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


def prepared(root: Path, tmp: Path) -> PreparedDataset:
    images = root / "images" / "val"
    raw = FORMATS["yolo"].read(
        root / "labels" / "val", images, ProblemLog("raise"), dataset_yaml=root / "data.yaml"
    )
    dataset = normalise(raw, images, ProblemLog("raise"), workers=1)
    write_prepared(tmp / "val.json", dataset, image_root=images, final_dir=tmp)
    return PreparedDataset.load(tmp / "val.json")


def icmflow_run(model_path: Path, dataset: PreparedDataset, size: int, out: Path) -> dict:
    model = TASK_BACKENDS["ultralytics"].load(
        TaskModelSpec(kind="detection", weights=model_path, input_size=size)
    )
    mapping = class_mapping(dataset.data["categories"], model.class_names, None)
    out.mkdir(parents=True, exist_ok=True)
    return score_predictions("detection", dataset, predict_dataset(model, dataset), mapping, out)


def ultralytics_run(model_path: Path, data_yaml: Path, size: int, out: Path):
    yolo = import_ultralytics().YOLO(str(model_path), task="detect")
    return yolo.val(
        data=str(data_yaml), imgsz=size, batch=1, plots=False, project=str(out), verbose=False
    )


def best_time(action, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=SHARED / "models/yolov8n_full_integer_quant.tflite"
    )
    parser.add_argument("--names", type=Path, default=SHARED / "models/yolov8n_metadata.yaml")
    parser.add_argument("--dataset", type=Path, default=SHARED / "samples/coco8-yolo")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        root = yolo_copy(args.dataset, args.names, tmp)
        dataset = prepared(root, tmp)
        images = len(dataset.images)
        ultralytics_run(args.model, root / "data.yaml", args.imgsz, tmp / "warm")  # loads, caches
        ours_s, ours = best_time(
            lambda: icmflow_run(args.model, dataset, args.imgsz, tmp / "icmflow"), args.repeats
        )
        theirs_s, theirs = best_time(
            lambda: ultralytics_run(args.model, root / "data.yaml", args.imgsz, tmp / "u"),
            args.repeats,
        )
    print(f"{images} images, {args.model.name}, imgsz {args.imgsz}, best of {args.repeats}")
    print(
        f"icmflow infer+score: {images / ours_s:7.2f} images/s  "
        f"mAP50-95 {ours['bbox']['map']:.4f}  mAP50 {ours['bbox']['map50']:.4f}"
    )
    print(
        f"ultralytics val:     {images / theirs_s:7.2f} images/s  "
        f"mAP50-95 {theirs.box.map:.4f}  mAP50 {theirs.box.map50:.4f}"
    )
    print(f"ratio (icmflow / ultralytics images/s): {theirs_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
