"""Ultralytics YOLO detectors and instance segmenters (`backend: ultralytics`).

`load` reads a `.pt` checkpoint, a model `.yaml` (random weights) or an export ultralytics runs
(e.g. a full-integer `.tflite`). Predictions use `val`'s defaults (conf 0.001, iou 0.7) but
max_det 100, the detections per image COCOeval counts (ultralytics' `val` keeps 300); override
with options `conf`, `iou`, `max_det`. Training runs ultralytics' own trainer on a
YOLO layout written to a temporary folder from the prepared COCO JSON: images are linked (one
with an EXIF orientation tag, which ultralytics would apply, is written as a PNG of its stored
pixels, the ones its labels refer to), and ultralytics' label caches land there, not in the
dataset. Class index = the
category's position among the sorted category ids (`yolo_classes`: for a YOLO dataset, its own
index). Ultralytics drops label files that mix box and polygon rows as corrupt, so detection
labels are all boxes and segmentation labels all polygons (RLE regions traced, several parts
joined as ultralytics' COCO converter joins them). With
`lr`, the optimiser is SGD (ultralytics' `optimizer=auto` ignores `lr0`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from icmflow.core.errors import CheckpointError
from icmflow.core.files import write_text
from icmflow.datasets.file_names import output_stem
from icmflow.datasets.formats.yolo import (
    box_row,
    label_row,
    write_dataset_yaml,
    yolo_classes,
    yolo_names,
)
from icmflow.datasets.images import read_header, read_rgb, write_png
from icmflow.datasets.prepared import PreparedDataset
from icmflow.datasets.rle import annotation_rle, decode
from icmflow.vision.tasks.base import (
    TASK_BACKENDS,
    Detections,
    TaskBackend,
    TaskKind,
    TaskModel,
    TaskModelSpec,
    TrainingData,
    TrainSettings,
)
from icmflow.vision.tasks.offline import OFFLINE_TRAIN_ARGS, import_ultralytics

TASKS: dict[TaskKind, str] = {"detection": "detect", "instance_segmentation": "segment"}
"""icmflow's task kinds -> ultralytics' task names."""
PREDICT_DEFAULTS = {"conf": 0.001, "iou": 0.7, "max_det": 100}
"""As ultralytics' `val` predicts, but as many detections as COCOeval scores."""
CONFIGS = (".yaml", ".yml")
"""Model configs (random weights); `.pt` is a checkpoint, any other suffix an export."""


def _open_yolo(path: Path, kind: TaskKind) -> Any:
    """An ultralytics `YOLO` of task `kind` from a local file; a `.yaml` that is not a file is
    looked up among the configs ultralytics ships (e.g. `yolov8n.yaml`)."""
    if not (path.is_file() or path.suffix in CONFIGS):
        raise CheckpointError(
            f"{path}: model file not found; train it first or correct the weights path"
        )
    yolo_class = import_ultralytics().YOLO
    task = TASKS[kind]
    try:
        if path.suffix in (".pt", *CONFIGS):
            yolo = yolo_class(str(path))
        else:  # an export: its embedded metadata says its task, if it has any
            from ultralytics.nn.backends.base import BaseBackend

            yolo = yolo_class(str(path), task=BaseBackend.read_metadata(path).get("task", task))
    except Exception as err:  # whatever the file holds, it is not a model ultralytics reads
        raise CheckpointError(f"{path}: not an ultralytics model ({err})") from None
    if yolo.task != task:
        raise CheckpointError(
            f"{path}: a {yolo.task!r} model, but the task is {kind} (ultralytics {task!r}); "
            "use a model of that task (e.g. a -seg model for instance_segmentation)"
        )
    return yolo


def _multi_label_predictor() -> type:
    """Ultralytics' detection predictor with the NMS its `val` scores mAP with: multi-label (a
    box keeps every class above `conf`), so icmflow's mAP is computed on what `val` sees."""
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import nms, ops

    class MultiLabelPredictor(DetectionPredictor):
        def postprocess(self, preds: Any, img: Any, orig_imgs: Any, **kwargs: Any) -> Any:
            preds = nms.non_max_suppression(
                preds,
                self.args.conf,
                self.args.iou,
                multi_label=True,
                max_det=self.args.max_det,
                end2end=getattr(self.model, "end2end", False),
            )
            if not isinstance(orig_imgs, list):
                orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
            return self.construct_results(preds, img, orig_imgs, **kwargs)

    return MultiLabelPredictor


def _class_names(yolo: Any) -> dict[int, str]:
    """The model's class names. An export's come from its embedded metadata when it has them:
    `yolo.names` loads an export (ultralytics logs "Loading …") in a predictor of its own, and
    predicting loads it once more."""
    from ultralytics.nn.autobackend import check_class_names

    names = None
    if isinstance(yolo.model, str):  # an export, not loaded yet
        from ultralytics.nn.backends.base import BaseBackend

        names = BaseBackend.read_metadata(yolo.model).get("names")
    names = check_class_names(names) if names else yolo.names
    return {int(k): str(v) for k, v in names.items()}


class UltralyticsModel(TaskModel):
    def __init__(self, yolo: Any, spec: TaskModelSpec):
        self.yolo, self.kind, self.device = yolo, spec.kind, spec.device
        self.class_names = _class_names(yolo)
        self.predictor = _multi_label_predictor() if spec.kind == "detection" else None
        self.args = {
            "imgsz": spec.input_size,
            **{key: spec.options.get(key, value) for key, value in PREDICT_DEFAULTS.items()},
        }

    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        return [self._predict_one(image) for image in images]

    def _predict_one(self, rgb: np.ndarray) -> Detections:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # ultralytics reads arrays as OpenCV's BGR
        (result,) = self.yolo.predict(
            bgr,
            predictor=self.predictor,
            device=self.device,
            retina_masks=True,
            verbose=False,
            **self.args,
        )
        boxes = result.boxes
        detections = Detections(
            boxes=boxes.xyxy.cpu().numpy().astype(np.float64),
            scores=boxes.conf.cpu().numpy().astype(np.float64),
            classes=boxes.cls.cpu().numpy().astype(np.int64),
        )
        if self.kind == "instance_segmentation":
            detections.masks = _encode_masks(result.masks, rgb.shape[:2])
        return detections


def _encode_masks(masks: Any, shape: tuple[int, int]) -> list[dict]:
    """Ultralytics masks (at the original size, `retina_masks`) as COCO RLEs."""
    if masks is None:
        return []
    binary = (masks.data.cpu().numpy() > 0.5).astype(np.uint8)
    assert binary.shape[1:] == shape, f"masks {binary.shape[1:]} are not at the image size {shape}"
    return mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))


def _polygons(ann: dict, height: int, width: int) -> list[list[float]]:
    """The annotation's outline(s) in pixels: its polygons, or an RLE region's traced contours."""
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        return segmentation
    mask = decode(annotation_rle(ann, height, width)).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _label_row(ann: dict, cls: int, width: int, height: int, segments: bool) -> str | None:
    """One YOLO row, normalised and clipped to the image; None when nothing is left."""
    if not segments:
        return box_row(ann, width, height, cls)
    from ultralytics.data.converter import merge_multi_segment

    polygons = _polygons(ann, height, width)
    if not polygons:
        return None
    points = (
        np.concatenate(merge_multi_segment(polygons))
        if len(polygons) > 1
        else np.reshape(polygons[0], (-1, 2))
    )
    return label_row(cls, np.clip(points / [width, height], 0, 1).reshape(-1).tolist())


def _write_split(
    dataset: PreparedDataset, classes: dict[int, int], root: Path, split: str, segments: bool
) -> Path:
    """`root/images/<split>` (links to the dataset's images) and `root/labels/<split>`.

    Ultralytics applies an image's EXIF orientation tag, icmflow's labels refer to the stored
    pixels (`datasets.images`): an image with a tag gets a PNG of its stored pixels instead of a
    link, so that labels and pixels agree.
    """
    from ultralytics.data.utils import img2label_paths

    images = root / "images" / split
    for image in dataset.images:
        source, name = dataset.image_path(image), output_stem(image["file_name"], dataset.path)
        if read_header(source).orientation == 1:
            link = images / image["file_name"]
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
        else:
            link = images / f"{name}.png"  # no other image has the stem (prepare)
            write_png(link, read_rgb(source))
        (label,) = img2label_paths([link])  # where ultralytics looks
        rows = [
            _label_row(ann, classes[ann["category_id"]], image["width"], image["height"], segments)
            for ann in dataset.annotations[image["id"]]
            if not ann["iscrowd"]
        ]
        write_text(Path(label), "".join(f"{row}\n" for row in rows if row))
    return images


def write_yolo_layout(data: TrainingData, root: Path, segments: bool) -> Path:
    """A YOLO dataset under `root` from `data`'s prepared COCO JSONs; returns its data YAML."""
    import_ultralytics()
    train = PreparedDataset.load(data.coco)
    categories = train.data["categories"]
    classes = yolo_classes(categories)
    splits = {"train": _write_split(train, classes, root, "train", segments)}
    splits["val"] = (
        _write_split(PreparedDataset.load(data.val_coco), classes, root, "val", segments)
        if data.val_coco
        else splits["train"]
    )
    path = root / "data.yaml"
    # absolute folders: ultralytics resolves the YAML's `path: .` against the working directory
    folders = {split: str(folder) for split, folder in splits.items()}
    write_dataset_yaml(path, yolo_names(categories), folders)
    return path


def _starting_model(settings: TrainSettings, kind: TaskKind) -> Any:
    """The `.pt` to fine-tune (`initial`), else the config (`model`) to train from scratch."""
    if settings.initial is not None:
        if Path(settings.initial).suffix != ".pt":
            raise CheckpointError(
                f"{settings.initial}: ultralytics fine-tunes `.pt` checkpoints only; "
                "exports (.tflite, .onnx, ...) only predict"
            )
        return _open_yolo(Path(settings.initial), kind)
    if settings.model is None:
        raise CheckpointError("ultralytics training needs `initial` (.pt) or `model` (.yaml)")
    return _open_yolo(Path(settings.model), kind)


def _train_args(
    spec: TaskModelSpec, data: TrainingData, settings: TrainSettings, out: Path
) -> dict[str, Any]:
    """Ultralytics trainer arguments; the run folder is `out/ultralytics`."""
    return {
        "epochs": settings.epochs,
        "batch": settings.batch_size,
        "imgsz": spec.input_size,
        "seed": settings.seed,
        "deterministic": True,
        "val": data.val_coco is not None,
        "project": str(out.resolve()),
        "name": "ultralytics",
        "exist_ok": True,
        "device": spec.device,
        "verbose": False,
        **({"optimizer": "SGD", "lr0": settings.lr} if settings.lr is not None else {}),
        **settings.options,
        **OFFLINE_TRAIN_ARGS,
    }


class UltralyticsBackend(TaskBackend):
    kinds = frozenset(TASKS)

    def load(self, spec: TaskModelSpec) -> UltralyticsModel:
        return UltralyticsModel(_open_yolo(Path(spec.weights), spec.kind), spec)

    def train(
        self, spec: TaskModelSpec, data: TrainingData, settings: TrainSettings, out: Path
    ) -> Path:
        yolo = _starting_model(settings, spec.kind)
        out = Path(out)
        args = _train_args(spec, data, settings, out)
        with tempfile.TemporaryDirectory(prefix="icmflow-yolo-") as tmp:
            segments = spec.kind == "instance_segmentation"
            yolo.train(data=str(write_yolo_layout(data, Path(tmp), segments)), **args)
        trainer = yolo.trainer
        best = Path(trainer.best if data.val_coco is not None else trainer.last)
        weights = out / "weights.pt"
        shutil.copyfile(best, weights)
        return weights


TASK_BACKENDS.register("ultralytics")(UltralyticsBackend())
