"""Training codecs: objectives registered by name, crops of images and masks, the engine."""
