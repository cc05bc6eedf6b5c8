"""Evaluation: image-quality metrics per codec, BD-rate, RD tables and plots."""
