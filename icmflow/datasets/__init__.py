"""Datasets: readers that normalise sources into one COCO-format schema, and the sample data."""
