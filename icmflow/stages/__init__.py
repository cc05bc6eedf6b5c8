"""One module per pipeline stage: wiring params and paths to library calls, nothing more."""
