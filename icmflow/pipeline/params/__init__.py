"""`params.yaml`, the single source of truth: its schema, validated once with clear messages.

Every section is strict (a misspelt key is an error, not a silently ignored setting), and every
problem is reported at once, each naming its key. Codec and dataset names are DVC stage keys and
params paths (`codecs.<name>`), so they may not contain dots.
"""

from icmflow.pipeline.params.codecs import (
    FAMILIES,
    CodecEntry,
    CompressedDomainEntry,
    LearnedEntry,
    RoiEntry,
    ScalableEntry,
    SecondaryEntry,
    is_compressed_domain,
    is_learned,
    is_roi,
    is_scalable,
    is_secondary,
    is_trained,
)
from icmflow.pipeline.params.load import load_params
from icmflow.pipeline.params.project import Params, ParamsError
from icmflow.pipeline.params.registered import check_initial_weights, check_registered
from icmflow.pipeline.params.sections import TrainParams

__all__ = [
    "FAMILIES",
    "CodecEntry",
    "CompressedDomainEntry",
    "LearnedEntry",
    "Params",
    "ParamsError",
    "RoiEntry",
    "ScalableEntry",
    "SecondaryEntry",
    "TrainParams",
    "check_initial_weights",
    "check_registered",
    "is_compressed_domain",
    "is_learned",
    "is_roi",
    "is_scalable",
    "is_secondary",
    "is_trained",
    "load_params",
]
