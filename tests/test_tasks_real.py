"""icmflow's detection accuracy against ultralytics' own `val`, with the real COCO-trained
YOLOv8n (full-integer TFLite) on ../shared/samples/coco8-yolo: the original val images and a
JPEG-coded copy. Skipped when ../shared is absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import coded_split, encode_dataset
from icmflow.core.errors import ProblemLog
from icmflow.datasets.coco import normalise
from icmflow.datasets.formats import FORMATS
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.tasks.accuracy import predict_dataset, score_predictions
from icmflow.tasks.classes import class_mapping
from icmflow.vision.tasks.base import TASK_BACKENDS, TaskModelSpec
from icmflow.vision.tasks.offline import import_ultralytics
from tests.helpers.project import REPO, real_sample

MODELS = Path(REPO.parent / "shared" / "models")
TFLITE = MODELS / "yolov8n_full_integer_quant.tflite"
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def coco8(tmp_path_factory) -> Path:
    """A copy of coco8 (ultralytics writes label caches beside labels) with a data YAML."""
    if not TFLITE.is_file():
        pytest.skip(f"{TFLITE} not found")
    root = tmp_path_factory.mktemp("coco8") / "coco8"
    shutil.copytree(real_sample("coco8-yolo"), root)
    names = yaml.safe_load((MODELS / "yolov8n_metadata.yaml").read_text())["names"]
    config = {"path": str(root), "train": "images/train", "val": "images/val", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


def prepared_val(coco8: Path, out: Path) -> PreparedDataset:
    raw = FORMATS["yolo"].read(
        coco8 / "labels" / "val",
        coco8 / "images" / "val",
        ProblemLog("raise"),
        dataset_yaml=coco8 / "data.yaml",
    )
    dataset = normalise(raw, coco8 / "images" / "val", ProblemLog("raise"), workers=1)
    write_prepared(out / "val.json", dataset, image_root=coco8 / "images" / "val", final_dir=out)
    return PreparedDataset.load(out / "val.json")


def icmflow_map(dataset: PreparedDataset, out: Path) -> dict:
    spec = TaskModelSpec(kind="detection", weights=TFLITE, input_size=640)
    model = TASK_BACKENDS["ultralytics"].load(spec)
    mapping = class_mapping(dataset.data["categories"], model.class_names, None)
    out.mkdir(parents=True, exist_ok=True)
    predictions = predict_dataset(model, dataset)
    return score_predictions("detection", dataset, predictions, mapping, out)["bbox"]


def ultralytics_val(data_yaml: Path, out: Path) -> dict:
    """Ultralytics' own `val` (its defaults: conf 0.001, max_det 300, its own AP)."""
    yolo = import_ultralytics().YOLO(str(TFLITE), task="detect")
    metrics = yolo.val(
        data=str(data_yaml), imgsz=640, batch=1, plots=False, project=str(out), verbose=False
    )
    return {"map": metrics.box.map, "map50": metrics.box.map50}


def compare(name: str, dataset: PreparedDataset, data_yaml: Path, out: Path) -> None:
    ours = icmflow_map(dataset, out / "icmflow")
    theirs = ultralytics_val(data_yaml, out / "ultralytics")
    print(
        f"{name}: icmflow mAP50-95 {ours['map']:.4f} mAP50 {ours['map50']:.4f} | "
        f"ultralytics val {theirs['map']:.4f} {theirs['map50']:.4f}"
    )
    for key in ("map", "map50"):
        assert ours[key] == pytest.approx(theirs[key], abs=TOLERANCE), key


def test_map_agrees_with_ultralytics_val_on_original_and_jpeg_images(coco8, tmp_path):
    val = prepared_val(coco8, tmp_path)
    compare("original", val, coco8 / "data.yaml", tmp_path / "original")
    coded = tmp_path / "jpeg"
    encode_dataset(CLASSICAL["jpeg"](family="jpeg", quality=30), {"val": val}, coded)
    coded_val = PreparedDataset.load(coded_split(coded, "val"))
    compare("jpeg q30", coded_val, coded / "data.yaml", tmp_path / "coded")  # as icmflow wrote it
