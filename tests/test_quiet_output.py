"""What the stages print: one short line per fact, no library noise."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import yaml

from icmflow.tasks.classes import class_mapping
from icmflow.vision.tasks.base import TASK_BACKENDS, TaskModelSpec
from tests.helpers.project import REPO, real_sample

NAMES = [f"class {i}" for i in range(80)]


def test_a_mapping_of_many_classes_logs_a_short_line():
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(NAMES)]
    mapping = class_mapping(categories, dict(enumerate(NAMES)), None)
    assert mapping.description == (
        "80 categories by name (class 0=0, class 1=1, class 2=2, class 3=3, class 4=4, "
        "… 75 more); 0 model classes dropped"
    )
    assert mapping.pairs.split(", ") == [f"class {i}={i}" for i in range(80)]
    two = class_mapping(categories[:2], dict(enumerate(NAMES)), None)
    assert (
        two.description == "2 categories by name (class 0=0, class 1=1); 78 model classes dropped"
    )


def test_an_exported_model_is_loaded_once(caplog, tmp_path):
    """Ultralytics logs "Loading <model> ..." each time it loads an export: once to predict, not
    again to read the class names."""
    models = real_sample("coco8-yolo").parents[1] / "models"
    spec = TaskModelSpec(
        kind="detection", weights=models / "yolov8n_full_integer_quant.tflite", input_size=320
    )
    names = yaml.safe_load((models / "yolov8n_metadata.yaml").read_text())["names"]
    ultralytics_log = logging.getLogger("ultralytics")  # its own handler, not propagated
    ultralytics_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ultralytics"):
            model = TASK_BACKENDS["ultralytics"].load(spec)
            model.predict([np.full((240, 320, 3), 128, dtype=np.uint8)])
    finally:
        ultralytics_log.removeHandler(caplog.handler)
    assert model.class_names == names
    loads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Loading")]
    assert len(loads) == 1, loads


def test_importing_the_codecs_prints_no_torch_jit_warning():
    """compressai's import makes torch warn that `torch.jit.script` is deprecated; importing
    icmflow's coding module (as a library, or in a dask worker: no CLI) stays quiet, and other
    FutureWarnings still show."""
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import icmflow.coding.learned\n"
        "    warnings.warn('another', FutureWarning)\n"
        "print([str(w.message) for w in caught if w.category is FutureWarning])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "['another']", result.stdout + result.stderr
