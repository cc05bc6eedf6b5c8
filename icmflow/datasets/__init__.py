"""Datasets: readers that normalise sources into one COCO-format schema, and the sample data.

To script with: `icmflow.api`, whose names `import icmflow` gives (README "Python API").
"""
