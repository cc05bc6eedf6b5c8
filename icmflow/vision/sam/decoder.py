"""SAM's mask decoder for many prompts on one image, without per-prompt copies of the image.

`MaskDecoder.predict_masks` repeats the 64×64×256 image embedding once per prompt and runs its
two-way transformer on every copy; most of its time goes into projecting and copying those
B×4096×256 tensors. `decode_prompts` computes the same function with the same weights,
rearranged by three exact identities of attention:

- until the first image-to-token attention, the image side (embedding, positional encoding, no
  mask input) is the same for every prompt: its projections are computed once;
- a key projection folds into the queries, q·(W_k x + b_k) = (W_kᵀ q)·x + q·b_k, and the last
  term is constant along the softmax axis; a value projection commutes with the attention
  average, Σ a_j (W_v x_j + b_v) = W_v (Σ a_j x_j) + b_v, since the weights a_j sum to one;
- an output projection distributes over the heads: W_o [o_1 … o_h] = Σ_h W_o,h o_h, so image
  tokens attending to a prompt's few tokens need W_o,h applied to those few tokens only.

So no per-prompt image tensor is ever projected to the attention width: every image-sized
product is one batched matrix product with the prompts' few tokens (7 per prompt, 56 with
heads). The results equal SAM's up to floating-point rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """B×T×(h·d) → B×h×T×d."""
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def _token_to_image(
    attention: Attention, queries: torch.Tensor, keys: torch.Tensor, keys_in: torch.Tensor
) -> torch.Tensor:
    """`attention(q=queries, k=keys_in, v=keys)`: prompt tokens (B×T×C) attend to the image
    (keys: B×N×C or 1×N×C for all prompts; keys_in: keys plus positional encoding)."""
    heads = attention.num_heads
    b, t, c = queries.shape
    q = _heads(attention.q_proj(queries), heads)  # B×h×T×d
    d = q.shape[-1]
    w_k = attention.k_proj.weight.view(heads, d, c)
    folded = (q @ w_k).reshape(b, heads * t, c)  # queries in the image's C dimensions
    weights = torch.softmax((folded @ keys_in.transpose(1, 2)) / math.sqrt(d), dim=-1)
    averaged = (weights @ keys).view(b, heads, t, c)  # B×h×T×C: attention-weighted image
    w_v = attention.v_proj.weight.view(heads, d, c)
    values = averaged @ w_v.transpose(1, 2) + attention.v_proj.bias.view(heads, 1, d)
    return attention.out_proj(values.transpose(1, 2).reshape(b, t, heads * d))


def _image_to_token(
    attention: Attention,
    keys_in: torch.Tensor,
    queries: torch.Tensor,
    queries_in: torch.Tensor,
    projected: torch.Tensor | None = None,
) -> torch.Tensor:
    """`attention(q=keys_in, k=queries_in, v=queries)`: every image token attends to each
    prompt's tokens; B×N×C. `projected`: `q_proj(keys_in)` when it is the same for all prompts."""
    heads = attention.num_heads
    b, t, c = queries.shape
    k = _heads(attention.k_proj(queries_in), heads)  # B×h×T×d
    v = _heads(attention.v_proj(queries), heads)
    d = k.shape[-1]
    if projected is None:  # fold the query projection into the prompt tokens
        w_q = attention.q_proj.weight.view(heads, d, c)
        folded = w_q.transpose(1, 2) @ k.transpose(2, 3)  # B×h×C×T
        folded = folded.permute(0, 2, 1, 3).reshape(b, c, heads * t)
        bias = attention.q_proj.bias.view(heads, 1, d) @ k.transpose(2, 3)  # B×h×1×T
        logits = keys_in @ folded + bias.reshape(b, 1, heads * t)  # B×N×(h·T)
    else:
        logits = (_heads(projected, heads) @ k.transpose(2, 3)).permute(0, 2, 1, 3)
        logits = logits.reshape(b, -1, heads * t)
    n = logits.shape[1]
    weights = _softmax_few(logits.view(b, n, heads, t), scale=1 / math.sqrt(d))
    w_o = attention.out_proj.weight.view(c, heads, d)
    outputs = torch.einsum("bhtd,chd->bhtc", v, w_o).reshape(b, heads * t, c)
    return torch.baddbmm(
        attention.out_proj.bias.to(outputs.dtype), weights.view(b, n, heads * t), outputs
    )


def _softmax_few(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax over a short last axis, in float32; faster there than `torch.softmax`."""
    weights = logits.float() * scale
    weights -= weights.amax(dim=-1, keepdim=True)
    weights.exp_()
    return weights.div_(weights.sum(dim=-1, keepdim=True))


def _block(
    block: TwoWayAttentionBlock,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`TwoWayAttentionBlock.forward`, with `keys` 1×N×C (shared) or B×N×C."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)
    keys_in = keys + key_pe
    queries = block.norm2(
        queries
        + _token_to_image(block.cross_attn_token_to_image, queries + query_pe, keys, keys_in)
    )
    queries = block.norm3(queries + block.mlp(queries))
    attention = block.cross_attn_image_to_token
    projected = attention.q_proj(keys_in) if keys.shape[0] == 1 else None  # shared image side
    update = _image_to_token(attention, keys_in, queries, queries + query_pe, projected)
    return queries, block.norm4(update.add_(keys))


def decode_prompts(
    decoder: MaskDecoder,
    image_embedding: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    *,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`decoder(image_embedding, image_pe, sparse, dense, multimask)` for B prompts on one
    image (1×C×h×w) whose dense prompt embedding is the same for all (no mask inputs)."""
    transformer = decoder.transformer
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.expand(len(sparse), -1, -1), sparse], dim=1)
    _, c, h, w = image_embedding.shape
    keys = (image_embedding + dense[:1]).flatten(2).transpose(1, 2)  # 1×N×C
    key_pe = image_pe.flatten(2).transpose(1, 2)
    queries = tokens
    for block in transformer.layers:
        queries, keys = _block(block, queries, keys, tokens, key_pe)
    queries = transformer.norm_final_attn(
        queries
        + _token_to_image(
            transformer.final_attn_token_to_image, queries + tokens, keys, keys + key_pe
        )
    )
    keys = keys.expand(len(tokens), -1, -1)  # a no-op unless the transformer has no block
    selected = range(1, decoder.num_mask_tokens) if multimask else range(1)
    hyper = torch.stack(
        [decoder.output_hypernetworks_mlps[i](queries[:, 1 + i]) for i in selected], dim=1
    )
    iou = decoder.iou_prediction_head(queries[:, 0])
    return _masks(decoder, keys.view(-1, h, w, c), hyper), iou[:, 1:] if multimask else iou[:, :1]


def _masks(decoder: MaskDecoder, image: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
    """`hyper` (B×M×C') applied to `decoder.output_upscaling` of the B×h×w×C image tokens.

    Channels stay last throughout (the transformer's layout), so the layer norm over channels
    is one `layer_norm` instead of LayerNorm2d's eight passes and nothing is copied."""
    up1, norm, act1, up2, act2 = decoder.output_upscaling
    x = up1(image.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # B×2h×2w×C/4
    x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = act2(up2(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)  # B×4h×4w×C/8
    b, uh, uw, channels = x.shape
    masks = x.reshape(b, uh * uw, channels) @ hyper.transpose(1, 2)  # B×(4h·4w)×M
    return masks.transpose(1, 2).reshape(b, -1, uh, uw)
