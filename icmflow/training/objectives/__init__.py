"""Training objectives by name (`objective:` of a codec entry); one module per family.

A new objective is a registered `Objective` subclass in a module imported here.
"""

from icmflow.training.objectives import auxiliary, compressed_domain, distortion, scalable
from icmflow.training.objectives.base import OBJECTIVES, Batch, Objective, rate_bpp

__all__ = [
    "OBJECTIVES",
    "Batch",
    "Objective",
    "auxiliary",
    "compressed_domain",
    "distortion",
    "rate_bpp",
    "scalable",
]
