"""YOLOv5 checkpoints (`yolov5n.pt`, ...), read without running any code they name.

YOLOv5 saves its model pickled: `{"model": <models.yolo.Model>, "ema": ..., ...}`, the model
half-precision. A plain `torch.load` would import YOLOv5's `models` package and call whatever
the pickle names. `read_yolov5` loads it with torch's `weights_only` unpickler, which builds
only allow-listed classes from their saved state: YOLOv5's global names are mapped to icmflow's
`Model` and `Detect` and ultralytics' blocks (`YOLOV5_CLASSES`), torch's layers are allowed as
they are, and anything else (an ultralytics v8 model, a YOLOv5 segmenter, a codec checkpoint)
is refused naming what it holds. `write_yolov5` saves a model back in the same format, under
the same global names, so YOLOv5's own tools read icmflow's fine-tuned weights too.
"""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from icmflow.core.errors import CheckpointError
from icmflow.core.files import write_bytes
from icmflow.vision.tasks.offline import import_ultralytics
from icmflow.vision.tasks.yolov5_model import Detect, Model

TORCH_LAYERS = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.SiLU,
    nn.MaxPool2d,
    nn.Upsample,
    nn.Sequential,
    nn.ModuleList,
)
"""The torch layers a YOLOv5 detection checkpoint pickles."""
PICKLE_PROTOCOL = 2
"""torch.save's default, YOLOv5's too: classes are GLOBAL opcodes (`module\\nname`)."""


def yolov5_classes() -> dict[str, type[nn.Module]]:
    """YOLOv5's global name -> the class icmflow builds in its place. A class is saved under
    its first name here (YOLOv5 7.0 renamed `Model` to `DetectionModel` and reads both)."""
    import_ultralytics()
    from ultralytics.nn.modules import C3, SPPF, Bottleneck, Concat, Conv

    return {
        "models.yolo.Model": Model,
        "models.yolo.DetectionModel": Model,
        "models.yolo.Detect": Detect,
        "models.common.Conv": Conv,
        "models.common.C3": C3,
        "models.common.Bottleneck": Bottleneck,
        "models.common.SPPF": SPPF,
        "models.common.Concat": Concat,
    }


def _allowed() -> list[Any]:
    return [(cls, name) for name, cls in yolov5_classes().items()] + list(TORCH_LAYERS)


def read_yolov5(path: Path) -> Model:
    """The detector in the YOLOv5 checkpoint `path` (its EMA weights when it has them), in
    float32 and eval mode; `CheckpointError` naming the file when it holds anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: YOLOv5 weights file not found; put the file there (icmflow never "
            "downloads weights) or fix the path"
        )
    with torch.serialization.safe_globals(_allowed()):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip or torch errors: say what the file holds
            raise CheckpointError(f"{path}: not a YOLOv5 checkpoint: {_why(path, err)}") from None
    model = None
    if isinstance(checkpoint, dict):
        model = (
            checkpoint.get("ema") if checkpoint.get("ema") is not None else checkpoint.get("model")
        )
    if not isinstance(model, Model) or not isinstance(model.model[-1], Detect):
        held = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path}: holds no YOLOv5 detector (a pickled models.yolo.Model under `model`), "
            f"but {held}; give a YOLOv5 detection checkpoint such as yolov5n.pt"
        )
    return model.float().eval()


def _why(path: Path, err: Exception) -> str:
    """What in the file icmflow does not read, or why torch could not read it."""
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip archive of torch.save
        return "not a file torch.save writes"
    if not foreign:  # torch's own reason, without its advice to load the file unsafely
        lines = str(err).strip().splitlines()
        return next((line for line in lines if "WeightsUnpickler error" in line), lines[0])
    if any(name.startswith("ultralytics.") for name in foreign):
        hint = "an ultralytics model (YOLOv8 and later): use `backend: ultralytics`"
    else:
        hint = "icmflow reads YOLOv5 detection checkpoints (Conv, C3, SPPF, Detect)"
    shown = sorted(foreign, key=lambda name: ("Model" not in name, name))[:4]
    return f"it pickles {', '.join(shown)}{', ...' if len(foreign) > 4 else ''}: {hint}"


class _YoloV5Pickler(pickle._Pickler):
    """Pickles the classes of `yolov5_classes` under YOLOv5's global names."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        alias = self.aliases.get(obj)
        if alias is None:
            super().save_global(obj, name)
            return
        module, _, qualname = alias.rpartition(".")
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def write_yolov5(path: Path, model: Model) -> None:
    """Save `model` as YOLOv5 saves its trained weights (half precision, no optimiser)."""
    aliases: dict[type, str] = {}
    for name, cls in yolov5_classes().items():
        aliases.setdefault(cls, name)
    pickler = type("Pickler", (_YoloV5Pickler,), {"aliases": aliases})
    half = copy.deepcopy(model).cpu().half().eval()
    pickle_module = ModuleType("yolov5_pickle")
    pickle_module.Pickler = pickler
    buffer = io.BytesIO()
    checkpoint = {"epoch": -1, "model": half, "ema": None, "optimizer": None}
    torch.save(checkpoint, buffer, pickle_module=pickle_module, pickle_protocol=PICKLE_PROTOCOL)
    write_bytes(Path(path), buffer.getvalue())
