"""A tiny YOLOv5-layout detector for tests, and YOLOv5's own code (PyPI `yolov5`, a dev
reference) run offline as the reference icmflow's backend is compared with."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from icmflow.vision.tasks.offline import import_ultralytics
from icmflow.vision.tasks.yolov5_model import Detect, Model

ANCHORS = torch.tensor(
    [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
).view(3, 3, 2)
"""YOLOv5's default anchors (pixels) for strides 8, 16, 32."""


def tiny_yolov5(names: list[str], seed: int = 0) -> Model:
    """A YOLOv5 detector of every block a real one has (Conv, C3 with Bottlenecks, SPPF,
    Upsample, Concat, Detect on strides 8, 16, 32), 8 to 64 channels, random weights."""
    import_ultralytics()
    from ultralytics.nn.modules import C3, SPPF, Concat, Conv

    torch.manual_seed(seed)
    sppf = SPPF(32, 32, 5)
    sppf.cv1.act = nn.SiLU()  # YOLOv5's SPPF activates its first convolution
    layers: list[tuple[nn.Module, int | list[int]]] = [
        (Conv(3, 8, 3, 2), -1),  # 0: stride 2
        (Conv(8, 16, 3, 2), -1),  # 1: 4
        (Conv(16, 16, 3, 2), -1),  # 2: 8
        (C3(16, 16, 1), -1),  # 3: 8
        (Conv(16, 32, 3, 2), -1),  # 4: 16
        (Conv(32, 32, 3, 2), -1),  # 5: 32
        (sppf, -1),  # 6: 32
        (nn.Upsample(None, 2, "nearest"), -1),  # 7: 16
        (Concat(1), [-1, 4]),  # 8: 16, 64 channels
        (Detect(len(names), ANCHORS, [16, 64, 32], [8, 16, 32]), [3, 8, 6]),
    ]
    for i, (layer, f) in enumerate(layers):
        layer.i, layer.f = i, f
    return Model([layer for layer, _ in layers], names).eval()


@contextmanager
def yolov5_reference() -> Iterator[ModuleType]:
    """The `yolov5` package, offline: its hub download and font fetch switched off, and its
    trusted (pickle-running) load allowed while the context lasts. Skips without it."""
    import_ultralytics()  # before yolov5 imports it: offline settings first
    yolov5 = pytest.importorskip("yolov5")
    import yolov5.models.common as common
    import yolov5.utils.downloads as downloads
    import yolov5.utils.general as general

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        for module in (downloads, common):
            patch.setattr(module, "attempt_download_from_hub", lambda *a, **k: None)
        patch.setattr(general, "check_font", lambda *a, **k: None)
        yield yolov5


def reference_model(weights: Path) -> nn.Module:
    """YOLOv5's own loading of `weights` (unfused, float32, eval); inside `yolov5_reference`."""
    from yolov5.models.experimental import attempt_load

    with warnings.catch_warnings():  # torch's note that the load runs the pickle (trusted here)
        warnings.filterwarnings("ignore", "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        return attempt_load(str(weights), device="cpu", fuse=False).eval()
