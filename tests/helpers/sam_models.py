"""A tiny Segment Anything built from segment_anything's own classes, for fast plumbing tests.

It has SAM's architecture at a small width and depth (encoder input 256 px instead of 1024), so
every code path runs as with vit_b, in a fraction of the time. Run as a module, it builds an edge
store with it (for tests that kill the build).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

TINY = "tiny"
BUILT: list[str] = []
"""One entry per tiny SAM built in this process."""


def build_tiny_sam(checkpoint: str | None = None) -> Sam:
    """A SAM with a one-block encoder and a two-block decoder, 32 wide; random weights only."""
    if checkpoint is not None:
        raise ValueError("the tiny SAM has no checkpoint")
    BUILT.append(TINY)
    size, patch, dim = 256, 16, 32
    grid = size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=1,
            embed_dim=dim,
            img_size=size,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[0],
            window_size=4,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(size, size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
    )
    return sam.eval()


def register_tiny_sam() -> None:
    sam_model_registry[TINY] = build_tiny_sam


def tiny_sams_built() -> int:
    return len(BUILT)


def main(prepared: str, out: str, work: str, images_per_shard: str) -> None:
    """Build the edge store of a prepared split with the tiny SAM, in this process."""
    from icmflow.datasets.prepared import PreparedDataset
    from icmflow.masks.edges import EdgeSettings, build_edge_masks
    from icmflow.masks.store import MaskStore
    from icmflow.vision.sam.model import SamSpec

    register_tiny_sam()
    dataset = PreparedDataset.load(prepared)
    store = build_edge_masks(
        dataset,
        Path(out),
        work=Path(work),
        spec=SamSpec(TINY, device="cpu"),
        settings=EdgeSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        images_per_shard=int(images_per_shard),
        client=None,
    )
    assert MaskStore(store).image_ids == [image["id"] for image in dataset.images]


if __name__ == "__main__":
    main(*sys.argv[1:])
