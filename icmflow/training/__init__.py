"""Training CompressAI codecs with the rate–distortion loss, masked or not."""

MASK_OF_LOSS: dict[str, str | None] = {"mse": None, "object": "object", "edge": "edge"}
"""Each training loss and the mask store its distortion reads (None: the whole image)."""
