"""Learned codec architectures and their checkpoints.

Architectures are CompressAI's registry (`compressai.registry.MODELS`); icmflow's own
architectures register there too when this package is imported, so `arch:` in a codec entry
and CompressAI's tools find every one of them by name.
"""

from icmflow.codecs import tcm  # noqa: F401  (registers arch "tcm")
