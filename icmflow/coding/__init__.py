"""Codecs: the model registry, checkpoints, and real bitstreams through the entropy coder.

To script with: `icmflow.api`, whose names `import icmflow` gives (README "Python API").
"""
