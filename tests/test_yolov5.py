"""The yolov5 task backend offline, on a tiny YOLOv5-layout detector written inside the test:
its checkpoint format (read without running pickled code, written as YOLOv5 writes it), wrong
files refused naming the file, `val`'s letterbox and NMS, the training loss (against YOLOv5's
own where the `yolov5` package is installed), fine-tuning on a JPEG-coded split, and a task
entry through `icmflow infer` and `icmflow finetune`."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from icmflow.coding.classical import CLASSICAL
from icmflow.coding.coded_dataset import coded_split, encode_dataset
from icmflow.core.errors import CheckpointError, IcmflowError
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.pipeline.cli import app
from icmflow.pipeline.paths import Paths
from icmflow.tasks.classes import ClassMappingError, class_mapping
from icmflow.vision.tasks import yolov5_checkpoint
from icmflow.vision.tasks.base import TASK_BACKENDS, TaskModelSpec, TrainingData, TrainSettings
from icmflow.vision.tasks.offline import import_ultralytics
from icmflow.vision.tasks.yolov5_checkpoint import read_yolov5, write_yolov5
from icmflow.vision.tasks.yolov5_loss import YoloV5Loss
from icmflow.vision.tasks.yolov5_model import class_names
from icmflow.vision.tasks.yolov5_predict import letterbox, rect_shape, select
from icmflow.vision.tasks.yolov5_train import Batches
from tests.helpers.network import no_network_access
from tests.helpers.project import REPO
from tests.helpers.yolov5 import reference_model, tiny_yolov5, yolov5_reference

NAMES = ["disc", "star", "box"]
"""The sample's categories (ids 1, 2, 3)."""
BACKEND = TASK_BACKENDS["yolov5"]
YOLOV5_GLOBALS = {
    "models.yolo.Model",
    "models.yolo.Detect",
    "models.common.Conv",
    "models.common.C3",
    "models.common.Bottleneck",
    "models.common.SPPF",
    "models.common.Concat",
}


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Any connection attempt or torchvision weight download fails the test."""
    with no_network_access():
        yield


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("yolov5") / "tiny.pt"
    write_yolov5(path, tiny_yolov5(NAMES))
    return path


@pytest.fixture(scope="module")
def coded_train(sample_prepared, tmp_path_factory) -> PreparedDataset:
    """The sample's train split coded by JPEG (q 50), as `icmflow encode` writes it."""
    out = tmp_path_factory.mktemp("coded") / "jpeg"
    jpeg = CLASSICAL["jpeg"](family="jpeg", quality=50)
    encode_dataset(jpeg, {"train": sample_prepared["train"]}, out)
    return PreparedDataset.load(coded_split(out, "train"))


def spec(weights: Path, size: int = 64, **options) -> TaskModelSpec:
    return TaskModelSpec(kind="detection", weights=weights, input_size=size, options=options)


def test_a_checkpoint_is_yolov5s_format_read_back_exactly(weights):
    model = tiny_yolov5(NAMES)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        expected = copy.deepcopy(model).half().float()(x)  # saved in half precision, as YOLOv5
        assert torch.equal(read_yolov5(weights)(x), expected)
    pickled = set(torch.serialization.get_unsafe_globals_in_checkpoint(weights))
    assert pickled >= YOLOV5_GLOBALS
    assert not any(name.startswith(("icmflow", "ultralytics")) for name in pickled)
    assert class_names(read_yolov5(weights)) == dict(enumerate(NAMES))


def test_yolov5_7s_name_of_the_model_class_is_read_too(tmp_path, monkeypatch):
    classes = yolov5_checkpoint.yolov5_classes()
    renamed = {"models.yolo.DetectionModel": classes.pop("models.yolo.DetectionModel"), **classes}
    monkeypatch.setattr(yolov5_checkpoint, "yolov5_classes", lambda: renamed)
    write_yolov5(tmp_path / "v7.pt", tiny_yolov5(NAMES))  # as YOLOv5 7.0 pickles its models
    monkeypatch.undo()
    pickled = torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "v7.pt")
    assert "models.yolo.DetectionModel" in pickled and "models.yolo.Model" not in pickled
    assert read_yolov5(tmp_path / "v7.pt").nc == len(NAMES)


def test_yolov5s_own_code_reads_what_icmflow_saves(weights):
    x = torch.rand(1, 3, 64, 96)
    with yolov5_reference():
        theirs = reference_model(weights)
        with torch.no_grad():
            assert torch.equal(theirs(x)[0], read_yolov5(weights)(x))


def _payload(marker: Path):
    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    return Payload()


def _wrong_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a file that is no YOLOv5 detector, what the error says besides its path)."""
    import_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    from tests.helpers.codecs import tiny_codec

    files = {
        "missing": (tmp / "nope.pt", "never downloads"),
        "random bytes": (tmp / "random.pt", "not a file torch.save writes"),
        "compressai state dict": (tmp / "codec.pth.tar", "holds no YOLOv5 detector"),
        "ultralytics v8": (tmp / "yolov8n.pt", "DetectionModel"),
        "code to run": (tmp / "evil.pt", "os.makedirs"),
    }
    files["random bytes"][0].write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"state_dict": tiny_codec().state_dict()}, files["compressai state dict"][0])
    torch.save({"model": DetectionModel("yolov8n.yaml", verbose=False)}, files["ultralytics v8"][0])
    torch.save({"model": _payload(tmp / "ran")}, files["code to run"][0])
    return files


def test_wrong_weights_files_are_refused_naming_the_file(tmp_path):
    for name, (path, message) in _wrong_files(tmp_path).items():
        with pytest.raises(CheckpointError) as error:
            BACKEND.load(spec(path))
        assert str(path) in str(error.value) and message in str(error.value), name
    assert not (tmp_path / "ran").exists()  # the pickled call never ran


def test_unknown_options_are_refused(weights):
    with pytest.raises(IcmflowError, match="arch"):
        BACKEND.load(spec(weights, arch="yolov5n"))


def test_letterbox_is_vals_rectangle_and_maps_boxes_back():
    # val's rect shapes: the longer side 640 -> 672 (half a stride more), the other rounded up
    assert rect_shape(426, 640, 640, 32) == (448, 672)
    assert rect_shape(640, 480, 640, 32) == (672, 512)
    assert rect_shape(500, 500, 640, 32) == (672, 672)
    rgb = np.zeros((426, 640, 3), dtype=np.uint8)
    boxed = letterbox(rgb, 320, rect_shape(426, 640, 320, 32))
    assert boxed.image.shape == (256, 352, 3) and boxed.offset == (16, 21)
    assert (boxed.image[:21] == 114).all() and (
        boxed.image[21 : 21 + 213, 16 : 16 + 320] == 0
    ).all()
    original = torch.tensor([[10.0, 20.0, 300.0, 400.0]])
    scale = torch.tensor([*boxed.scale, *boxed.scale])
    shifted = original * scale + torch.tensor([16, 21, 16, 21])
    assert torch.allclose(boxed.to_original(shifted, 426, 640), original, atol=1e-4)


def test_nms_keeps_every_class_above_conf_and_suppresses_within_a_class():
    def cell(box, obj, classes):
        return [*box, obj, *classes]

    prediction = torch.tensor(
        [
            cell((50, 50, 20, 20), 0.9, (0.9, 0.5, 0.0001)),  # two classes above conf
            cell((51, 50, 20, 20), 0.8, (0.9, 0.0, 0.0)),  # overlaps the first, class 0
            cell((150, 50, 20, 20), 0.0005, (1.0, 1.0, 1.0)),  # objectness below conf
        ]
    )
    boxes, scores, classes = select(prediction, conf=0.001, iou=0.6, max_det=100)
    assert classes.tolist() == [0, 1] and torch.allclose(scores, torch.tensor([0.81, 0.45]))
    assert torch.allclose(boxes[0], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    assert select(prediction, conf=0.001, iou=0.6, max_det=1)[2].tolist() == [0]


def test_predictions_are_boxes_in_the_original_images_pixels(weights):
    model = BACKEND.load(spec(weights, max_det=50))
    assert model.class_names == dict(enumerate(NAMES))
    rng = np.random.default_rng(0)
    shapes = [(37, 91), (120, 64), (64, 64)]
    predictions = model.predict([rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes])
    for (height, width), found in zip(shapes, predictions, strict=True):
        n = len(found.scores)
        assert 0 < n <= 50 and found.boxes.shape == (n, 4) and (found.scores > 0.001).all()
        assert (found.boxes[:, :2] >= 0).all() and (found.boxes[:, :2] <= found.boxes[:, 2:]).all()
        assert (found.boxes[:, [0, 2]] <= width).all() and (found.boxes[:, [1, 3]] <= height).all()
        assert set(found.classes.tolist()) <= {0, 1, 2}


def test_a_box_is_assigned_its_cell_and_the_two_nearest_neighbours(weights):
    detect = read_yolov5(weights).detect
    loss = YoloV5Loss(detect, 64)
    # on the stride-8 level of a 64 x 64 input: centre (2.4, 5.6) cells, 16 x 24 px
    target = torch.tensor([[0, 1, 2.4 / 8, 5.6 / 8, 16 / 64, 24 / 64]])
    found = loss.assign(0, 8, 8, target)
    where = torch.stack((found.anchor, found.cell_y, found.cell_x), 1).tolist()
    cells = {tuple(cell) for cell in where}
    fitting = {0, 1, 2}  # (10, 13), (16, 30), (33, 23) px: all within 4x of 16 x 24
    assert cells == {(a, y, x) for a in fitting for y, x in ((5, 2), (5, 1), (6, 2))}
    own = (found.cell_x == 2) & (found.cell_y == 5)
    assert torch.allclose(found.box[own][0], torch.tensor([0.4, 0.6, 2.0, 3.0]))
    assert (found.cls == 1).all() and (found.image == 0).all()
    corner = torch.tensor([[0, 0, 7.7 / 8, 0.3 / 8, 16 / 64, 24 / 64]])  # no cell beyond
    found = loss.assign(0, 8, 8, corner)
    assert set(found.cell_x.tolist()) == {7} and set(found.cell_y.tolist()) == {0}
    assert found.image.numel() == 3  # one cell for each fitting anchor
    thin = torch.tensor([[0, 0, 0.5, 0.5, 0.9, 0.02]])  # 58 x 1 px: no anchor within 4x
    assert loss.assign(0, 8, 8, thin).image.numel() == 0


def test_the_loss_is_yolov5s_own(weights):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 128)
    n = 10
    targets = torch.cat(
        (
            torch.randint(0, 2, (n, 1)).float(),
            torch.randint(0, len(NAMES), (n, 1)).float(),
            torch.rand(n, 2) * 0.8 + 0.1,
            torch.rand(n, 2) * 0.4 + 0.02,
        ),
        1,
    )
    ours = read_yolov5(weights).train()
    ours_loss = YoloV5Loss(ours.detect, 128)(ours(x), targets)
    with yolov5_reference():
        from yolov5.utils.loss import ComputeLoss

        theirs = reference_model(weights).train()
        theirs.hyp = {"box": 0.05, "obj": (128 / 640) ** 2, "cls": 0.5 * len(NAMES) / 80}
        theirs.hyp.update(cls_pw=1.0, obj_pw=1.0, fl_gamma=0.0, anchor_t=4.0)
        theirs_loss, _ = ComputeLoss(theirs)(theirs(x), targets)
    assert ours_loss.item() == pytest.approx(theirs_loss.item(), rel=1e-5)


def dataset_loss(weights: Path, dataset: PreparedDataset, size: int) -> float:
    """The training loss over the whole dataset, BatchNorm on its running statistics."""
    model = read_yolov5(weights).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    to_class = class_mapping(dataset.data["categories"], class_names(model), None).to_model
    batches = Batches(dataset, to_class, size)
    images, targets = batches.batch(list(range(len(batches))), [False] * len(batches))
    with torch.no_grad():
        return YoloV5Loss(model.detect, size)(model(images), targets).item()


def test_fine_tuning_on_a_coded_split_lowers_the_loss(weights, coded_train, tmp_path):
    settings = TrainSettings(
        epochs=10,
        batch_size=5,
        lr=0.2,  # a random tiny model: YOLOv5 scales objectness by (input size / 640)^2
        initial=weights,
        options={"nbs": 5, "warmup_epochs": 0, "fliplr": 0.0},
    )
    data = TrainingData(coco=coded_train.path)
    tuned = BACKEND.train(spec(tmp_path / "unused.pt", 128), data, settings, tmp_path)
    assert tuned == tmp_path / "weights.pt"
    before = dataset_loss(weights, coded_train, 128)
    after = dataset_loss(tuned, coded_train, 128)
    assert after < 0.8 * before, (before, after)
    assert BACKEND.load(spec(tuned)).class_names == dict(enumerate(NAMES))


def test_fine_tuning_refuses_unknown_options_and_unmatched_categories(weights, coded_train, tmp):
    data = TrainingData(coco=coded_train.path)
    settings = TrainSettings(epochs=1, batch_size=2, initial=weights, options={"mosaic": 1.0})
    with pytest.raises(IcmflowError, match="mosaic"):
        BACKEND.train(spec(weights), data, settings, tmp)
    other = tmp / "other.pt"
    write_yolov5(other, tiny_yolov5(["person", "car", "dog"]))
    settings = TrainSettings(epochs=1, batch_size=2, initial=other)
    with pytest.raises(ClassMappingError, match="disc"):
        BACKEND.train(spec(other), data, settings, tmp)
    empty = tmp / "empty.json"
    write_prepared(
        empty,
        {**coded_train.data, "images": [], "annotations": []},
        image_root=coded_train.image_root,
        final_dir=tmp,
    )
    settings = TrainSettings(epochs=1, batch_size=2, initial=weights)
    with pytest.raises(IcmflowError, match=r"empty\.json: no images"):
        BACKEND.train(spec(weights), TrainingData(coco=empty), settings, tmp)
    assert not (tmp / "weights.pt").exists()


@pytest.fixture
def tmp(tmp_path) -> Path:
    return tmp_path


runner = CliRunner()


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output


def test_a_yolov5_task_entry_infers_and_fine_tunes_through_the_stages(
    weights, sample_root, tmp_path, monkeypatch
):
    shutil.copytree(sample_root, tmp_path / "coco")
    shutil.copy(weights, tmp_path / "yolov5-tiny.pt")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {
        "sample": {**params["datasets"]["sample"], "root": str(tmp_path / "coco")}
    }
    params["encode"].update(n_workers=1, images_per_task=100)
    params["codecs"] = {"jpeg-q50": {"family": "jpeg", "quality": 50}}
    params["report"]["anchors"] = ["jpeg"]
    params["tasks"] = {
        "v5": {
            "kind": "detection",
            "backend": "yolov5",
            "weights": "yolov5-tiny.pt",
            "input_size": 64,
            "finetune": {
                "codecs": ["jpeg-q50"],
                "epochs": 1,
                "batch_size": 4,
                "options": {"nbs": 4, "warmup_epochs": 0},
            },
        }
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    invoke("prepare", "sample")
    invoke("encode", "jpeg-q50")
    invoke("infer", "original", "v5")
    invoke("finetune", "jpeg-q50", "v5")
    paths = Paths(tmp_path)
    for out in (paths.predictions("original", "v5"), paths.finetuned("jpeg-q50", "v5")):
        accuracy = json.loads((out / "accuracy.json").read_text())
        assert set(accuracy["bbox"]["per_class"]) == set(NAMES)
        results = json.loads((out / "predictions.json").read_text())
        assert results and {r["category_id"] for r in results} <= {1, 2, 3}
    assert read_yolov5(paths.finetuned_weights("jpeg-q50", "v5")).nc == len(NAMES)
    (tmp_path / "yolov5-tiny.pt").write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["infer", "original", "v5"])
    assert result.exit_code == 1 and "yolov5-tiny.pt: not a YOLOv5 checkpoint" in result.output
