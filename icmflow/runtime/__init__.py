"""Where work runs: devices, and dask clusters (a LocalCluster by default, one worker per GPU)."""
