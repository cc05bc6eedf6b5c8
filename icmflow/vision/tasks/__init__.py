"""Task models (detectors, segmenters) behind one interface (`base`), one module per library.

Importing this package registers every backend in `TASK_BACKENDS`: `ultralytics` (YOLO) and
`torchvision` (R-CNNs, DeepLabV3). Neither touches the network (`offline`): weights are local
files, and ultralytics is imported only when a YOLO model is loaded or trained.
"""

from icmflow.vision.tasks import torchvision_backend, ultralytics_backend  # noqa: F401  (register)
