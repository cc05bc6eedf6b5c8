"""Machine vision models icmflow runs: Segment Anything today; detectors and segmenters next."""
