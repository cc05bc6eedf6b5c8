"""Task-model backends: ultralytics YOLO and torchvision models load, predict and train offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from icmflow.core.errors import CheckpointError, IcmflowError, InputError
from icmflow.datasets.images import read_rgb
from icmflow.datasets.prepared import PreparedDataset, write_prepared
from icmflow.vision.tasks.base import (
    TASK_BACKENDS,
    Detections,
    TaskModelSpec,
    TrainingData,
    TrainSettings,
)
from icmflow.vision.tasks.torchvision_backend import build
from icmflow.vision.tasks.ultralytics_backend import write_yolo_layout
from tests.helpers.network import no_network_access

TFLITE = Path("/work/shared/models/yolov8n_full_integer_quant.tflite")
COCO8_IMAGE = Path("/work/shared/samples/coco8-yolo/images/val/000000000036.jpg")
YOLO = TASK_BACKENDS["ultralytics"]
TORCHVISION = TASK_BACKENDS["torchvision"]


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Any connection attempt or torchvision weight download fails the test."""
    with no_network_access():
        yield


def images(*shapes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def assert_detections(prediction: Detections, shape: tuple[int, int], masks: bool) -> int:
    n = len(prediction.scores)
    assert prediction.boxes.shape == (n, 4) and prediction.classes.shape == (n,)
    assert prediction.classes.dtype == np.int64
    h, w = shape
    assert (prediction.boxes >= 0).all() and (prediction.boxes[:, [0, 2]] <= w).all()
    assert (prediction.boxes[:, [1, 3]] <= h).all()
    if masks:
        assert len(prediction.masks) == n
        assert all(rle["size"] == [h, w] for rle in prediction.masks)
    else:
        assert prediction.masks is None
    return n


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def subset(dataset: PreparedDataset, out: Path, count: int) -> PreparedDataset:
    """The first `count` images with objects, as a prepared dataset of their own."""
    kept = [i for i in dataset.images if dataset.annotations[i["id"]]][:count]
    ids = {i["id"] for i in kept}
    data = {
        **dataset.data,
        "images": kept,
        "annotations": [a for a in dataset.data["annotations"] if a["image_id"] in ids],
    }
    path = out / "subset.json"
    write_prepared(path, data, image_root=dataset.image_root, final_dir=out)
    return PreparedDataset.load(path)


# ultralytics


def yolo_spec(weights: Path | str, kind="detection", **options) -> TaskModelSpec:
    return TaskModelSpec(kind, Path(weights), input_size=64, options=options)


@pytest.fixture(scope="module")
def yolo_training(sample_layouts, sample_prepared, tmp_path_factory):
    """yolov8n trained 1 epoch at 64 px on the sample, and the sample's files before."""
    before = snapshot(sample_layouts)
    out = tmp_path_factory.mktemp("yolo-train")
    weights = YOLO.train(
        yolo_spec("unused.pt"),
        TrainingData(coco=sample_prepared["train"].path),
        TrainSettings(epochs=1, batch_size=4, model="yolov8n.yaml"),
        out,
    )
    return weights, before


def test_yolo_predicts_images_of_any_size():
    torch.manual_seed(0)
    model = YOLO.load(yolo_spec("yolov8n.yaml", conf=1e-9, max_det=5))  # random weights
    assert len(model.class_names) == 80
    shapes = [(96, 128), (70, 50)]
    for prediction, shape in zip(model.predict(images(*shapes)), shapes, strict=True):
        assert 0 < assert_detections(prediction, shape, masks=False) <= 5


def test_yolo_segmenter_masks_are_rles_at_image_size():
    torch.manual_seed(0)
    model = YOLO.load(yolo_spec("yolov8n-seg.yaml", "instance_segmentation", conf=1e-9, max_det=3))
    (prediction,) = model.predict(images((90, 60)))
    assert 0 < assert_detections(prediction, (90, 60), masks=True) <= 3


def test_yolo_trains_and_its_weights_predict(yolo_training, sample_prepared):
    weights, _ = yolo_training
    assert weights.name == "weights.pt" and weights.is_file()
    model = YOLO.load(yolo_spec(weights, conf=1e-9, max_det=2))
    assert model.class_names == {0: "disc", 1: "star", 2: "box"}
    dataset = sample_prepared["train"]
    image = read_rgb(dataset.image_path(dataset.images[0]))
    (prediction,) = model.predict([image])
    assert 0 < assert_detections(prediction, image.shape[:2], masks=False) <= 2


def test_yolo_fine_tunes_with_validation(yolo_training, sample_prepared, tmp_path):
    weights, _ = yolo_training
    data = TrainingData(coco=sample_prepared["val"].path, val_coco=sample_prepared["val"].path)
    settings = TrainSettings(epochs=1, batch_size=4, lr=1e-3, initial=weights)
    tuned = YOLO.train(yolo_spec("unused.pt"), data, settings, tmp_path)
    assert (tmp_path / "ultralytics" / "weights" / "best.pt").is_file()
    assert YOLO.load(yolo_spec(tuned)).class_names == {0: "disc", 1: "star", 2: "box"}


def test_yolo_does_not_fine_tune_an_export(sample_prepared, tmp_path):
    data = TrainingData(coco=sample_prepared["val"].path)
    settings = TrainSettings(epochs=1, batch_size=4, initial=TFLITE)
    with pytest.raises(CheckpointError, match=r"fine-tunes `\.pt` checkpoints only"):
        YOLO.train(yolo_spec("unused.pt"), data, settings, tmp_path)


def test_yolo_training_leaves_the_dataset_untouched(yolo_training, sample_layouts):
    _, before = yolo_training  # this test runs after every training above
    after = snapshot(sample_layouts)
    assert after == before
    assert not [p for p in after if p.suffix == ".cache"]


def test_yolo_layout_rows_are_all_boxes_or_all_polygons(sample_prepared, tmp_path):
    data = TrainingData(coco=sample_prepared["train"].path)
    for segments, lengths in ((False, {5}), (True, None)):
        root = tmp_path / str(segments)
        write_yolo_layout(data, root, segments)
        rows = [
            line.split()
            for label in (root / "labels" / "train").glob("*.txt")
            for line in label.read_text().splitlines()
        ]
        assert rows and all(0 <= float(v) <= 1 for row in rows for v in row[1:])
        assert {int(row[0]) for row in rows} == {0, 1, 2}
        found = {len(row) for row in rows}
        assert found == lengths if lengths else all(n >= 7 and n % 2 for n in found)
    links = list((tmp_path / "True" / "images" / "train").iterdir())
    assert len(links) == len(sample_prepared["train"].images)
    assert all(link.is_symlink() for link in links)


def test_missing_yolo_weights(tmp_path):
    path = tmp_path / "detector.pt"
    with pytest.raises(CheckpointError, match="not found") as err:
        YOLO.load(yolo_spec(path))
    assert str(path) in str(err.value)


def test_yolo_detector_is_not_a_segmenter(yolo_training):
    weights, _ = yolo_training
    with pytest.raises(CheckpointError, match="'detect' model") as err:
        YOLO.load(yolo_spec(weights, "instance_segmentation"))
    assert str(weights) in str(err.value)


def test_a_torchvision_state_dict_is_no_yolo(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an ultralytics model"):
        YOLO.load(yolo_spec(path))


@pytest.mark.skipif(not TFLITE.is_file(), reason=f"{TFLITE} is not here")
def test_real_tflite_detector_finds_the_person():
    model = YOLO.load(TaskModelSpec("detection", TFLITE, input_size=640))
    assert model.class_names[0] == "person"
    image = read_rgb(COCO8_IMAGE)
    (prediction,) = model.predict([image])
    assert_detections(prediction, image.shape[:2], masks=False)
    people = (prediction.classes == 0) & (prediction.scores > 0.5)
    assert people.any()
    x0, y0, x1, y1 = prediction.boxes[people][0]
    assert (x1 - x0) * (y1 - y0) > 0.1 * image.shape[0] * image.shape[1]  # in original pixels


# torchvision


def tv_spec(arch: str, kind="detection", weights: Path = Path("unused.pt"), **options):
    return TaskModelSpec(kind, weights, input_size=64, options={"arch": arch, **options})


def save_random(spec: TaskModelSpec, path: Path, wrap: str | None = None) -> TaskModelSpec:
    torch.manual_seed(0)
    state = build(spec).state_dict()
    torch.save({wrap: state, "epoch": 1} if wrap else state, path)
    return TaskModelSpec(spec.kind, path, spec.input_size, options=spec.options)


@pytest.mark.parametrize("wrap", [None, "model"])
def test_faster_rcnn_loads_a_state_dict_and_predicts(tmp_path, wrap):
    spec = tv_spec("fasterrcnn_mobilenet_v3_large_fpn", num_classes=4, conf=0.0, max_det=7)
    model = TORCHVISION.load(save_random(spec, tmp_path / "frcnn.pt", wrap))
    assert model.class_names == {0: "0", 1: "1", 2: "2", 3: "3"}
    (prediction,) = model.predict(images((96, 128)))
    assert 0 < assert_detections(prediction, (96, 128), masks=False) <= 7
    assert set(prediction.classes) <= {1, 2, 3}


def test_deeplab_returns_a_class_map_at_the_image_size(tmp_path):
    spec = tv_spec(
        "deeplabv3_mobilenet_v3_large",
        "semantic_segmentation",
        num_classes=3,
        class_names={0: "background", 1: "disc", 2: "star"},
    )
    model = TORCHVISION.load(save_random(spec, tmp_path / "deeplab.pt"))
    assert model.class_names[2] == "star"
    maps = model.predict(images((96, 128), (50, 70)))
    assert [m.shape for m in maps] == [(96, 128), (50, 70)]
    assert all(m.dtype == np.int64 and m.min() >= 0 and m.max() < 3 for m in maps)


def test_torchvision_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "other.pt"
    save_random(tv_spec("deeplabv3_mobilenet_v3_large", "semantic_segmentation"), path)
    with pytest.raises(CheckpointError, match="does not fit") as err:
        TORCHVISION.load(tv_spec("fasterrcnn_mobilenet_v3_large_fpn", weights=path))
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        TORCHVISION.load(tv_spec("fasterrcnn_mobilenet_v3_large_fpn", weights=tmp_path / "no.pt"))
    with pytest.raises(CheckpointError, match="instance_segmentation model, not detection"):
        TORCHVISION.load(tv_spec("maskrcnn_resnet50_fpn", weights=path))


@pytest.mark.parametrize(
    ("arch", "kind"),
    [
        ("fasterrcnn_mobilenet_v3_large_fpn", "detection"),
        ("maskrcnn_resnet50_fpn", "instance_segmentation"),
        ("deeplabv3_mobilenet_v3_large", "semantic_segmentation"),
    ],
)
def test_torchvision_trains_and_its_weights_predict(sample_prepared, tmp_path, arch, kind):
    dataset = subset(sample_prepared["train"], tmp_path, 2)
    spec = tv_spec(arch, kind, num_classes=4, conf=0.0, max_det=3)
    initial = save_random(spec, tmp_path / "initial.pt").weights if kind == "detection" else None
    settings = TrainSettings(epochs=1, batch_size=2, lr=1e-3, initial=initial)
    weights = TORCHVISION.train(spec, TrainingData(coco=dataset.path), settings, tmp_path)
    assert weights == tmp_path / "weights.pt"
    model = TORCHVISION.load(TaskModelSpec(kind, weights, 64, options=spec.options))
    image = read_rgb(dataset.image_path(dataset.images[0]))
    (prediction,) = model.predict([image])
    if kind == "semantic_segmentation":
        assert prediction.shape == image.shape[:2]
    else:
        assert_detections(prediction, image.shape[:2], masks=kind == "instance_segmentation")


def test_torchvision_training_checks_the_classes(sample_prepared, tmp_path):
    spec = tv_spec("fasterrcnn_mobilenet_v3_large_fpn", num_classes=3)  # categories 1..3
    data = TrainingData(coco=sample_prepared["train"].path)
    with pytest.raises(InputError, match=r"model class 3 is outside 1\.\.2"):
        TORCHVISION.train(spec, data, TrainSettings(epochs=1, batch_size=2), tmp_path)


def test_torchvision_training_refuses_trainer_options(sample_prepared, tmp_path):
    spec = tv_spec("fasterrcnn_mobilenet_v3_large_fpn", num_classes=4)
    data = TrainingData(coco=sample_prepared["train"].path)
    settings = TrainSettings(epochs=1, batch_size=2, options={"nbs": 8})
    with pytest.raises(IcmflowError, match=r"training options \['nbs'\].*takes none"):
        TORCHVISION.train(spec, data, settings, tmp_path)
