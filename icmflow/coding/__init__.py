"""Codecs: the model registry, checkpoints, and real bitstreams through the entropy coder."""
