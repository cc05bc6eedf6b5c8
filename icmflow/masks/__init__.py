"""Binary masks for the masked loss: object masks from annotations, stored as sharded zarr v3.

To script with: `icmflow.api`, whose names `import icmflow` gives (README "Python API").
"""
