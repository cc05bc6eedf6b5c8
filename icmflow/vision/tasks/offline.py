"""Keep ultralytics and torchvision off the network: every model and asset is a local file.

Ultralytics reads its environment once, when it is first imported: `import_ultralytics()` sets
`YOLO_OFFLINE=1` (downloads fail at once instead of hanging, no package auto-install, no
analytics) and a config dir of icmflow's own (its `settings.json`, with every logging
integration off) before importing it, so import ultralytics only through it. Training turns off
what would fetch assets: the AMP check (loads a hub model), plots (fetch a font) and dataloader
worker processes.

Importing ultralytics also replaces `PIL.Image.open` with one that, the first time Pillow cannot
identify a file, installs and registers `pi-heif`. icmflow registers `pillow-heif` itself (the
HEIF codec), so that path is switched off: an unidentifiable file (a truncated bitstream) stays
Pillow's `UnidentifiedImageError` instead of a package install or a `ModuleNotFoundError`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

CONFIG_DIR = Path(tempfile.gettempdir()) / "icmflow-ultralytics"
"""Ultralytics' settings dir unless `import_ultralytics(config_dir)` names another."""

OFFLINE_TRAIN_ARGS: dict[str, Any] = {"amp": False, "plots": False, "workers": 0}
"""Ultralytics trainer arguments that keep training offline."""

TORCHVISION_OFFLINE: dict[str, Any] = {"weights": None, "weights_backbone": None}
"""Torchvision model builder arguments: random initialisation, nothing downloaded."""

_INTEGRATIONS_OFF = dict.fromkeys(
    ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb"), False
)


def import_ultralytics(config_dir: Path | None = None) -> ModuleType:
    """The `ultralytics` package, imported offline with its settings in `config_dir`."""
    if "ultralytics" in sys.modules:
        if os.environ.get("YOLO_OFFLINE") != "1":
            log.warning("ultralytics was imported before icmflow set YOLO_OFFLINE=1")
        _keep_pillow_plugins()
        return sys.modules["ultralytics"]
    config_dir = Path(config_dir or CONFIG_DIR)
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    import ultralytics
    from ultralytics.utils import SETTINGS

    if any(SETTINGS.get(key) for key in _INTEGRATIONS_OFF):  # write only when they differ
        SETTINGS.update(_INTEGRATIONS_OFF)
    _keep_pillow_plugins()
    return ultralytics


def _keep_pillow_plugins() -> None:
    """Switch off ultralytics' lazy pi-heif install in `PIL.Image.open` (module doc)."""
    from ultralytics.utils import patches

    patches._pil_plugins_registered = True
