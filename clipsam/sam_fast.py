"""SAM fast paths: the encoder's attention through SDPA, and a leaner mask decoder.

Stock segment-anything builds the attention matrix by hand and adds the decomposed relative
position bias to it in a separate pass (on CPU that ``add`` alone is ~41% of the encoder's
time). Here the bias (per query: one row term plus one column term) is formed once and handed
to SDPA as its additive mask, so the fused kernel does scale, bias, softmax and ``@ v`` together.

The mask decoder runs on every prediction, cached or not. Ours keeps one copy of the image
tokens until they diverge, folds each attention's projections into the handful of prompt tokens
(``clipsam.attention``), forms ``keys + pe`` once per block and upscales with sub-pixel matmuls.
Same weights, same math: both match stock to float rounding (see tests).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos
from segment_anything.modeling.transformer import Attention as DecoderAttention
from segment_anything.modeling.transformer import TwoWayAttentionBlock
from torch import Tensor

from clipsam.attention import Projections, attention


def rel_pos_terms(attn: Attention, q: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The decomposed rel-pos bias of queries q (B·heads, HW, C): its row term (BH, H, W, kH)
    and column term (BH, H, W, kW); query (h, w) and key (kh, kw) get their sum."""
    height, width = size
    batch_heads, _, dim = q.shape
    rel_h = get_rel_pos(height, height, attn.rel_pos_h).to(q.dtype)  # (H, kH, C)
    rel_w = get_rel_pos(width, width, attn.rel_pos_w).to(q.dtype)  # (W, kW, C)
    r_q = q.reshape(batch_heads, height, width, dim)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w)
    return bias_h, bias_w


def rel_pos_bias(attn: Attention, q: Tensor, size: tuple[int, int]) -> Tensor:
    """The additive bias (B, heads, HW, HW) that ``add_decomposed_rel_pos`` would add."""
    height, width = size
    batch_heads = q.shape[0]
    bias_h, bias_w = rel_pos_terms(attn, q, size)
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(batch_heads // attn.num_heads, attn.num_heads, height * width, -1)


#: From this many tokens (SAM's global blocks: 4096 at 1024 px) a CPU fp32 attention with the
#: rel-pos bias goes through :func:`row_chunked_attention` instead of SDPA with a full mask.
CHUNKED_MIN_TOKENS = 1024
#: Query rows of the grid per step of :func:`row_chunked_attention`: 8 rows of 64 are 512 queries,
#: an 8 MB block of scores against 4096 keys, which stays in cache.
CHUNK_ROWS = 8


def row_chunked_attention(
    q: Tensor, k: Tensor, v: Tensor, bias_h: Tensor, bias_w: Tensor, scale: float
) -> Tensor:
    """softmax(scale · q kᵀ + decomposed rel-pos bias) v, for one head and a block of query rows
    at a time (q, k, v: (N, HW, C); the bias terms as :func:`rel_pos_terms` gives them).

    Each block's scores are formed by a matmul, then its row and column bias terms are added in
    place and softmaxed in place, so no (HW × HW) bias or score matrix is ever written: the bias
    costs two cache-resident passes instead of a 4096² tensor per head written and read back.
    Exact (what stock segment-anything computes, in another order); measured faster than SDPA
    with the full mask on CPU in fp32 (docs: README, Benchmarks)."""
    heads, tokens, _ = q.shape
    _, height, width, _ = bias_h.shape
    scaled, keys = q * scale, k.transpose(1, 2).contiguous()  # stock scales q, not the scores
    out = torch.empty_like(q)
    rows = min(CHUNK_ROWS, height)
    block = q.new_empty(rows * width, tokens)
    for head in range(heads):
        for top in range(0, height, rows):
            count = min(rows, height - top)
            span = slice(top * width, (top + count) * width)
            scores = block[: count * width]
            torch.mm(scaled[head, span], keys[head], out=scores)
            by_key = scores.view(count, width, height, width)  # query row, col; key row, col
            by_key.add_(bias_h[head, top : top + count, :, :, None])
            by_key.add_(bias_w[head, top : top + count, :, None, :])
            scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
            scores.div_(scores.sum(dim=-1, keepdim=True))
            torch.mm(scores, v[head], out=out[head, span])
    return out


def folded_rel_pos_attention(
    attn: Attention, q: Tensor, k: Tensor, v: Tensor, size: tuple[int, int]
) -> Tensor:
    """softmax(scale · q kᵀ + decomposed rel-pos bias) v for (B, heads, HW, C) q, k, v, with the
    bias folded into the queries and keys, so that SDPA's fused kernel runs without a mask.

    Query (h, w) and key (kh, kw) get ``bias_h[q, kh] + bias_w[q, kw]``: the dot product of
    the query's bias terms ``[bias_h[q, :] | bias_w[q, :]]`` (over scale) with the key's one-hot
    grid position ``[e_kh | e_kw]``. Appended to q and k (head dim C + H + W), it turns the
    bias into part of ``q kᵀ``; v is zero-padded to the same width (SDPA's fused kernels want
    one head dim) and the padding dropped after. Exact: every product with a one-hot is a
    copy, and the kernel accumulates in fp32, so under bf16 the bias is rounded once, not
    summed in bf16 as the materialised mask was; no (HW × HW) bias is ever written."""
    batch, heads, tokens, dim = q.shape
    height, width = size
    bias_h, bias_w = rel_pos_terms(attn, q.reshape(batch * heads, tokens, dim), size)
    inverse = 1.0 / attn.scale  # SDPA scales the whole product, bias columns included
    rows = torch.arange(tokens, device=q.device)
    grid = torch.cat([F.one_hot(rows // width, height), F.one_hot(rows % width, width)], dim=-1).to(
        k.dtype
    )  # (HW, H + W)
    q = torch.cat(
        [
            q,
            (bias_h * inverse).reshape(batch, heads, tokens, height).to(q.dtype),
            (bias_w * inverse).reshape(batch, heads, tokens, width).to(q.dtype),
        ],
        dim=-1,
    )
    k = torch.cat([k, grid.expand(batch, heads, tokens, height + width)], dim=-1)
    v = F.pad(v, (0, height + width))
    return F.scaled_dot_product_attention(q, k, v, scale=attn.scale)[..., :dim]


def sdpa_forward(self: Attention, x: Tensor) -> Tensor:
    """Drop-in for ``Attention.forward`` (x: (B, H, W, C)); large CPU fp32 attentions with the
    rel-pos bias go through :func:`row_chunked_attention`, the others through
    :func:`folded_rel_pos_attention`."""
    batch, height, width, _ = x.shape
    tokens = height * width
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, HW, C)
    chunked = (
        self.use_rel_pos and tokens >= CHUNKED_MIN_TOKENS
        and q.device.type == "cpu" and q.dtype == torch.float32
    )  # fmt: skip
    if chunked:
        flat_q, flat_k, flat_v = (t.reshape(batch * self.num_heads, tokens, -1) for t in (q, k, v))
        terms = rel_pos_terms(self, flat_q, (height, width))
        out = row_chunked_attention(flat_q, flat_k, flat_v, *terms, self.scale)
    elif self.use_rel_pos:
        out = folded_rel_pos_attention(self, q, k, v, (height, width))
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    out = out.reshape(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
    return self.proj(out.reshape(batch, height, width, -1))


def mask_forward(self: Attention, x: Tensor) -> Tensor:
    """``Attention.forward`` through SDPA with the rel-pos bias materialised as its additive
    mask (B, heads, HW, HW): the route before :func:`folded_rel_pos_attention`, kept for the
    benchmarks (``enable_mask_attention``). On SAM's global blocks that mask is 4096² per head,
    written and read back: under bf16 on CPU its broadcast add took longer than the attention."""
    batch, height, width, _ = x.shape
    tokens = height * width
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, HW, C)
    mask = None
    if self.use_rel_pos:
        flat_q = q.reshape(batch * self.num_heads, tokens, -1)
        mask = rel_pos_bias(self, flat_q, (height, width)).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
    return self.proj(out.reshape(batch, height, width, -1))


def enable_mask_attention(encoder: ImageEncoderViT) -> int:
    """Route every block's attention of ``encoder`` through :func:`mask_forward`."""
    for block in encoder.blocks:
        block.attn.forward = types.MethodType(mask_forward, block.attn)
    return len(encoder.blocks)


def flex_forward(self: Attention, x: Tensor) -> Tensor:
    """``Attention.forward`` through ``flex_attention``: the decomposed rel-pos bias is a score
    modification (two gathers per score), so no (HW × HW) bias is ever written. Exact; on
    the CPUs measured it is slower than :func:`sdpa_forward` (README, Benchmarks), so it is an
    option (:func:`enable_flex_attention`), not the default."""
    batch, height, width, _ = x.shape
    tokens = height * width
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, HW, C)
    if not self.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        flat_q = q.reshape(batch * self.num_heads, tokens, -1)
        bias_h, bias_w = (
            t.reshape(batch, self.num_heads, tokens, -1)
            for t in rel_pos_terms(self, flat_q, (height, width))
        )

        def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return (
                score + bias_h[b, h, q_idx, kv_idx // width] + bias_w[b, h, q_idx, kv_idx % width]
            )

        out = _flex_attention()(q, k, v, score_mod=score_mod)
    out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
    return self.proj(out.reshape(batch, height, width, -1))


#: Whether :func:`flex_forward` runs ``flex_attention`` compiled (once per process, ≈ 30 s on
#: CPU; without it flex_attention is a slow reference). The tests run it eagerly.
FLEX_COMPILED = True
_FLEX: dict[bool, Callable[..., Tensor]] = {}


def _flex_attention() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    if FLEX_COMPILED not in _FLEX:
        kernel = torch.compile(flex_attention, dynamic=False) if FLEX_COMPILED else flex_attention
        _FLEX[FLEX_COMPILED] = kernel
    return _FLEX[FLEX_COMPILED]


def enable_flex_attention(encoder: ImageEncoderViT) -> int:
    """Route every block's attention of ``encoder`` through :func:`flex_forward`."""
    for block in encoder.blocks:
        block.attn.forward = types.MethodType(flex_forward, block.attn)
    return len(encoder.blocks)


def enable_fast_attention(encoder: ImageEncoderViT) -> int:
    """Route every block's attention of ``encoder`` through SDPA; returns how many."""
    count = 0
    for block in encoder.blocks:
        block.attn.forward = types.MethodType(sdpa_forward, block.attn)
        count += 1
    return count


def disable_fast_attention(encoder: ImageEncoderViT) -> None:
    """Back to segment-anything's own attention (e.g. a stock copy for comparisons)."""
    for block in encoder.blocks:
        block.attn.__dict__.pop("forward", None)


def decoder_attention_forward(self: DecoderAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Drop-in for the two-way transformer's ``Attention.forward``. One side is always the 9-odd
    prompt tokens, so :func:`clipsam.attention.attention` folds the projections into them
    instead of projecting all 4096 image tokens (or SDPA when that is cheaper)."""
    proj = Projections.of_linears(
        self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.num_heads
    )
    return attention(q, k, v, proj)


def two_way_block_forward(
    self: TwoWayAttentionBlock, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
) -> tuple[Tensor, Tensor]:
    """``TwoWayAttentionBlock.forward`` with the image side's ``keys + key_pe`` formed once (stock
    forms it again for the image-to-token attention, from unchanged keys) and the residual added
    into the per-prompt attention output (in the first block, ``keys`` is one shared copy)."""
    if self.skip_first_layer_pe:
        queries = self.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + self.self_attn(q=q, k=q, v=queries)
    queries = self.norm1(queries)
    keys_pe = keys + key_pe
    q = queries + query_pe
    queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=keys_pe, v=keys))
    queries = self.norm3(queries + self.mlp(queries))
    attn_out = self.cross_attn_image_to_token(q=keys_pe, k=queries + query_pe, v=queries)
    keys = self.norm4(attn_out.add_(keys))  # attn_out is fresh and has the full batch
    return queries, keys


def upscaled_masks(
    decoder: MaskDecoder, src: Tensor, size: tuple[int, int], hyper: Tensor
) -> Tensor:
    """``hyper @ output_upscaling(src)`` as masks (B, M, 4h, 4w), in token layout throughout.

    Each ConvTranspose2d(kernel 2, stride 2) maps one input pixel to a 2×2 block of outputs: a
    matmul over channels. Kept channels-last in sub-pixel order (i, j, di, dj, c), LayerNorm2d
    becomes one fused ``layer_norm`` over the last dim, and the single pixel shuffle happens at
    the end, on the M mask planes instead of the 32 feature planes. ``src``: (B, h·w, C).
    """
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    batch, (height, width) = src.shape[0], size
    out1, out2 = conv1.out_channels, conv2.out_channels
    # ConvTranspose2d weight (in, out, 2, 2) → linear weight (2·2·out, in), rows (di, dj, o)
    w1 = conv1.weight.permute(2, 3, 1, 0).reshape(4 * out1, -1)
    w2 = conv2.weight.permute(2, 3, 1, 0).reshape(4 * out2, -1)
    x = F.linear(src, w1, conv1.bias.repeat(4)).view(batch, height, width, 2, 2, out1)
    x = act1(F.layer_norm(x, (out1,), norm.weight, norm.bias, norm.eps))
    x = act2(F.linear(x, w2, conv2.bias.repeat(4)))  # (B, h, w, di, dj, di2·dj2·out2)
    x = x.reshape(batch, -1, out2)  # rows ordered (i, j, di, dj, di2, dj2)
    masks = torch.bmm(x, hyper.transpose(1, 2).to(x.dtype))  # (B, rows, M)
    masks = masks.view(batch, height, width, 2, 2, 2, 2, -1)
    # row = 4i + 2di + di2, column = 4j + 2dj + dj2
    masks = masks.permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(batch, -1, 4 * height, 4 * width)


def fast_predict_masks(
    self: MaskDecoder,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse_prompt_embeddings: Tensor,
    dense_prompt_embeddings: Tensor,
) -> tuple[Tensor, Tensor]:
    """``MaskDecoder.predict_masks`` without K copies of the image tokens.

    Stock SAM repeats the image embedding once per prompt before its two-way transformer. Until
    the first image-to-token attention, every copy is identical, so the first block's image-side
    projections (3 of the 10 large matmuls) run once and broadcast. The upscaling then runs on
    the transformer's (K, h·w, C) output directly (:func:`upscaled_masks`). Same results as
    stock to float rounding. Used when one image is decoded and no mask prompt is given (the
    dense embedding is then a broadcast constant); anything else goes through the stock code.
    """
    dense = dense_prompt_embeddings
    if image_embeddings.shape[0] != 1 or (dense.shape[0] > 1 and dense.stride(0) != 0):
        return MaskDecoder.predict_masks(
            self, image_embeddings, image_pe, sparse_prompt_embeddings, dense
        )
    output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
    prompts = sparse_prompt_embeddings.size(0)
    tokens = torch.cat(
        (output_tokens.unsqueeze(0).expand(prompts, -1, -1), sparse_prompt_embeddings), dim=1
    )
    height, width = image_embeddings.shape[-2:]
    hs, src = self.transformer(image_embeddings + dense[:1], image_pe, tokens)
    src = src.expand(prompts, -1, -1)  # already per prompt after the first block
    mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
        dim=1,
    )
    masks = upscaled_masks(self, src, (height, width), hyper_in)
    return masks, self.iou_prediction_head(hs[:, 0, :])


def enable_fast_decoder(decoder: MaskDecoder) -> None:
    """Route ``decoder.predict_masks`` through :func:`fast_predict_masks`, and the two-way
    transformer's blocks and attention layers through the functions above (hooks still fire)."""
    decoder.predict_masks = types.MethodType(fast_predict_masks, decoder)
    for module in decoder.transformer.modules():
        if isinstance(module, DecoderAttention):
            module.forward = types.MethodType(decoder_attention_forward, module)
        elif isinstance(module, TwoWayAttentionBlock):
            module.forward = types.MethodType(two_way_block_forward, module)


def disable_fast_decoder(decoder: MaskDecoder) -> None:
    """Back to segment-anything's own decoder code."""
    decoder.__dict__.pop("predict_masks", None)
    for module in decoder.transformer.modules():
        module.__dict__.pop("forward", None)
