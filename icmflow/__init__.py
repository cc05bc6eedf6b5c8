"""icmflow: a reproducible pipeline for image coding for machines (ICM) research."""

__version__ = "0.1.0"
