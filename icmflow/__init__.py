"""icmflow: a reproducible pipeline for image coding for machines (ICM) research."""

import warnings

__version__ = "0.1.0"

# compressai 1.2.8 imports torch_geometric, which calls `torch.jit.script` at import time: torch
# warns about its deprecation there. Every icmflow module that imports compressai (and every
# dask worker that unpickles one of their tasks) imports this package first.
warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
