"""YOLOv5 detectors (`backend: yolov5`): the object-region paper's detector family.

`load` reads a YOLOv5 checkpoint (`yolov5n.pt`, ..., or what `train` wrote) with icmflow's own
loader, which runs no code from the file (`yolov5_checkpoint`). Predictions follow YOLOv5's
`val.py`: its letterbox rectangles, conf 0.001, multi-label NMS at IoU 0.6; but at most 100
detections per image (`val` keeps 300), the number COCO's detection metric counts. Options
`conf`, `iou`, `max_det` override them. `train` fine-tunes a checkpoint (`initial`) with
YOLOv5's loss and optimiser settings (`yolov5_train`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from icmflow.core.errors import CheckpointError, IcmflowError
from icmflow.vision.tasks.base import (
    TASK_BACKENDS,
    Detections,
    TaskBackend,
    TaskModel,
    TaskModelSpec,
    TrainingData,
    TrainSettings,
)
from icmflow.vision.tasks.yolov5_checkpoint import read_yolov5
from icmflow.vision.tasks.yolov5_model import Model, class_names
from icmflow.vision.tasks.yolov5_predict import letterbox, rect_shape, select, to_tensor

PREDICT_DEFAULTS = {"conf": 0.001, "iou": 0.6, "max_det": 100}
"""YOLOv5 `val`'s thresholds, with the 100 detections per image that COCOeval scores."""


class YoloV5Model(TaskModel):
    kind = "detection"

    def __init__(self, model: Model, spec: TaskModelSpec):
        unknown = sorted(set(spec.options) - set(PREDICT_DEFAULTS))
        if unknown:
            raise IcmflowError(
                f"task options {unknown}: the yolov5 backend reads only "
                f"{', '.join(PREDICT_DEFAULTS)}; remove the others from params.yaml"
            )
        self.model, self.device = model.to(spec.device).eval(), spec.device
        self.class_names = class_names(model)
        self.size, self.stride = spec.input_size, int(model.stride.max())
        self.args = {key: spec.options.get(key, value) for key, value in PREDICT_DEFAULTS.items()}

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[Detections]:
        return [self._predict_one(image) for image in images]

    def _predict_one(self, rgb: np.ndarray) -> Detections:
        height, width = rgb.shape[:2]
        boxed = letterbox(rgb, self.size, rect_shape(height, width, self.size, self.stride))
        (decoded,) = self.model(to_tensor([boxed.image], self.device))
        boxes, scores, classes = select(decoded, **self.args)
        return Detections(
            boxes=boxed.to_original(boxes, height, width).cpu().numpy().astype(np.float64),
            scores=scores.cpu().numpy().astype(np.float64),
            classes=classes.cpu().numpy().astype(np.int64),
        )


class YoloV5Backend(TaskBackend):
    kinds = frozenset({"detection"})

    def load(self, spec: TaskModelSpec) -> YoloV5Model:
        return YoloV5Model(read_yolov5(Path(spec.weights)), spec)

    def train(
        self, spec: TaskModelSpec, data: TrainingData, settings: TrainSettings, out: Path
    ) -> Path:
        from icmflow.vision.tasks.yolov5_train import fine_tune

        if settings.initial is None:
            raise CheckpointError(
                "the yolov5 backend fine-tunes a YOLOv5 checkpoint: give the task `weights:` "
                "(e.g. yolov5n.pt); training from an architecture is not supported"
            )
        return fine_tune(spec, data, settings, Path(out))


TASK_BACKENDS.register("yolov5")(YoloV5Backend())
