"""icmflow's yolov5 backend against YOLOv5's own code, with the real COCO YOLOv5n
(../shared/models/yolov5n.pt) on ../shared/samples/coco-val158: the same network outputs, and
the same mAP50-95 / mAP50 (icmflow's COCOeval against YOLOv5's `val.py`) within 0.01. Skipped
without ../shared or the `yolov5` package (a dev reference)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset
from icmflow.tasks.accuracy import predict_dataset, score_predictions
from icmflow.tasks.classes import class_mapping
from icmflow.vision.tasks.base import TASK_BACKENDS, TaskModelSpec, TrainingData
from icmflow.vision.tasks.ultralytics_backend import write_yolo_layout
from icmflow.vision.tasks.yolov5_checkpoint import read_yolov5
from icmflow.vision.tasks.yolov5_predict import letterbox, rect_shape, to_tensor
from tests.helpers.builders import prepare_split
from tests.helpers.project import REPO, real_sample
from tests.helpers.yolov5 import reference_model, yolov5_reference

WEIGHTS = REPO.parent / "shared" / "models" / "yolov5n.pt"
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def val158(tmp_path_factory) -> PreparedDataset:
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} not found")
    root = real_sample("coco-val158")
    out = tmp_path_factory.mktemp("val158")
    return prepare_split(out, root / "instances_val2017.json", root / "images", "val")


def test_the_network_outputs_are_yolov5s(val158):
    image = read_rgb(val158.image_path(val158.images[0]))
    boxed = letterbox(image, 640, rect_shape(*image.shape[:2], 640, 32))
    x = to_tensor([boxed.image], "cpu")
    with yolov5_reference(), torch.no_grad():
        theirs = reference_model(WEIGHTS)(x)[0]
        ours = read_yolov5(WEIGHTS)(x)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)  # YOLOv5 adds its grid offsets in
    # another order: about 3e-5 px apart


def icmflow_map(dataset: PreparedDataset, out: Path) -> dict:
    spec = TaskModelSpec(kind="detection", weights=WEIGHTS, input_size=640)
    model = TASK_BACKENDS["yolov5"].load(spec)
    mapping = class_mapping(dataset.data["categories"], model.class_names, None)
    predictions = predict_dataset(model, dataset)
    return score_predictions("detection", dataset, predictions, mapping, out)["bbox"]


def yolov5_val(dataset: PreparedDataset, out: Path) -> dict:
    """YOLOv5's `val.py` with its defaults (batch 32, rect batches, conf 0.001, IoU 0.6,
    max_det 300, its own AP) on the same images and non-crowd boxes, in COCO's 80-class order."""
    data = write_yolo_layout(TrainingData(coco=dataset.path), out / "yolo", segments=False)
    with yolov5_reference(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        from yolov5 import val

        (_, _, map50, map_, *_), *_ = val.run(
            data=str(data),
            weights=str(WEIGHTS),
            imgsz=640,
            device="cpu",
            workers=0,
            half=False,
            plots=False,
            project=str(out / "runs"),
        )
    return {"map": map_, "map50": map50}


@pytest.mark.slow
def test_map_agrees_with_yolov5s_own_val(val158, tmp_path):
    ours = icmflow_map(val158, tmp_path)
    theirs = yolov5_val(val158, tmp_path)
    print(
        f"coco-val158: icmflow mAP50-95 {ours['map']:.4f} mAP50 {ours['map50']:.4f} | "
        f"YOLOv5 val {theirs['map']:.4f} {theirs['map50']:.4f}"
    )
    assert ours["images"] == 158
    for key in ("map", "map50"):
        assert ours[key] == pytest.approx(theirs[key], abs=TOLERANCE), key
