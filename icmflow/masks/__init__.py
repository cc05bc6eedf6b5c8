"""Binary masks for the masked loss: object masks from annotations, stored as sharded zarr v3."""
