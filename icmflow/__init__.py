"""icmflow: a reproducible pipeline for image coding for machines (ICM) research.

The Python API (`icmflow.api`, README "Python API") is importable from here: `icmflow.open_codec`,
`icmflow.MaskStore`, ... Its names load on first use, so that `import icmflow` (and every CLI
command) stays fast and the stages' code does not depend on them.
"""

import importlib
import warnings

__version__ = "0.1.0"

# compressai 1.2.8 imports torch_geometric, which calls `torch.jit.script` at import time: torch
# warns about its deprecation there. Every icmflow module that imports compressai (and every
# dask worker that unpickles one of their tasks) imports this package first.
warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

API = (
    "BitstreamError",
    "CheckpointError",
    "Coded",
    "IcmflowError",
    "LayeredCodec",
    "LearnedCodec",
    "MaskStore",
    "Paths",
    "PreparedDataset",
    "bd_rate",
    "classical_codec",
    "decode_file",
    "image_metrics",
    "load_model",
    "load_params",
    "mse",
    "msssim",
    "open_codec",
    "overlay",
    "psnr",
    "read_image",
    "score_detection",
    "score_semantic",
    "side_by_side",
    "write_image",
)
"""`icmflow.api.__all__` (a test keeps the two equal): only these names load the API, never a
submodule's name that `from icmflow import <submodule>` looks up first."""


def __getattr__(name: str) -> object:
    if name in API:  # imported by name: no stage's code reaches the API through here
        return getattr(importlib.import_module("icmflow.api"), name)
    raise AttributeError(f"module 'icmflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
