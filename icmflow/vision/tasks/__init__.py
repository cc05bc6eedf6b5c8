"""Task models (detectors, segmenters) behind one interface (`base`), one module per library.

Importing this package registers every backend in `TASK_BACKENDS`: `ultralytics` (YOLO),
`torchvision` (R-CNNs, DeepLabV3) and `yolov5` (YOLOv5 checkpoints). None touches the network
(`offline`): weights are local files, and ultralytics is imported only when a YOLO or YOLOv5
model is loaded or trained.
"""

from icmflow.vision.tasks import (  # noqa: F401  (register)
    torchvision_backend,
    ultralytics_backend,
    yolov5_backend,
)
