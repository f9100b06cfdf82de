"""Fast paths compute what the stock code computes: SAM encoder and decoder, reduced precision."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsam import sam_fast
from clipsam.precision import autocast_dtype, cpu_has_bf16
from clipsam.sam_backbone import SAM_ARCHS, SamArch, build_sam_model
from clipsam.sam_fast import (
    disable_fast_attention,
    disable_fast_decoder,
    enable_fast_attention,
    sdpa_forward,
)


@pytest.mark.parametrize(
    "arch",
    [
        SamArch(64, 2, 2, (1,), img_size=256),
        SamArch(96, 3, 4, (2,), img_size=320),
        SAM_ARCHS["tiny"],
    ],
    ids=["2-blocks-256px", "3-blocks-320px", "micro-sam"],  # windowed + global blocks
)
@pytest.mark.parametrize("route", ["folded", "row-chunked", "mask"])
def test_sam_encoder_with_sdpa_matches_stock(arch, route, monkeypatch):
    """Every SDPA route: the rel-pos bias folded into the queries and keys (the default), the
    row-chunked attention (what SAM's 4096-token global blocks take on CPU in fp32; here on
    every block, with blocks of 3 query rows so that the last block of a grid is a short one),
    and the bias materialised as SDPA's mask (the earlier route, kept for the benchmarks)."""
    if route == "row-chunked":
        monkeypatch.setattr(sam_fast, "CHUNKED_MIN_TOKENS", 1)
        monkeypatch.setattr(sam_fast, "CHUNK_ROWS", 3)
    torch.manual_seed(0)
    stock = build_sam_model(arch).image_encoder
    for block in stock.blocks:  # random rel-pos tables (zeros at init would hide a bias bug)
        block.attn.rel_pos_h.data.normal_(0, 0.5)
        block.attn.rel_pos_w.data.normal_(0, 0.5)
    fast = copy.deepcopy(stock)
    enable = sam_fast.enable_mask_attention if route == "mask" else enable_fast_attention
    assert enable(fast) == arch.depth
    pixels = torch.randn(2, 3, arch.img_size, arch.img_size)
    with torch.inference_mode():
        expected, got = stock(pixels), fast(pixels)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    disable_fast_attention(fast)
    assert all("forward" not in b.attn.__dict__ for b in fast.blocks)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # on purpose
def test_sam_encoder_with_flex_attention_matches_stock(monkeypatch):
    """The rel-pos bias as a flex_attention score modification (eager here: compiling takes
    half a minute; the benchmark times the compiled kernel) gives stock's embedding."""
    monkeypatch.setattr(sam_fast, "FLEX_COMPILED", False)
    arch = SamArch(64, 2, 2, (1,), img_size=256)  # a windowed and a global block
    torch.manual_seed(0)
    stock = build_sam_model(arch).image_encoder
    for block in stock.blocks:
        block.attn.rel_pos_h.data.normal_(0, 0.5)
        block.attn.rel_pos_w.data.normal_(0, 0.5)
    flex = copy.deepcopy(stock)
    assert sam_fast.enable_flex_attention(flex) == arch.depth
    pixels = torch.randn(1, 3, arch.img_size, arch.img_size)
    with torch.inference_mode():
        expected, got = stock(pixels), flex(pixels)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


def test_sdpa_attention_is_wired_into_the_pipelines_sam(make_tiny):
    pipeline = make_tiny()
    attn = pipeline.sam.sam.image_encoder.blocks[0].attn
    assert attn.forward.__func__ is sdpa_forward
    stock = make_tiny(fast_attention=False)
    assert "forward" not in stock.sam.sam.image_encoder.blocks[0].attn.__dict__


def test_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        autocast_dtype("fp16", cpu)
    assert autocast_dtype("fp16", cuda) is torch.float16
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert cpu_has_bf16() is native
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if native else None)


def test_bf16_backbones_stay_close_to_fp32(make_tiny):
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    fp32, bf16 = make_tiny(), make_tiny(precision="bf16")
    assert fp32.info()["precision"] == "float32" and bf16.info()["precision"] == "bfloat16"
    assert fp32.sam.decoder_dtype == torch.float32 and bf16.sam.decoder_dtype == torch.bfloat16
    # The coarse maps (CLIP in each precision); SAM's side is its embedding, below: a random
    # micro-SAM's mask may flip at a pixel's edge, which moves the fused map by a whole level.
    coarse = [make_tiny(precision=p, use_sam=False) for p in ("fp32", "bf16")]
    a, b = (pipeline.predict([image], "widget")[0] for pipeline in coarse)
    assert np.abs(a.anomaly_map - b.anomaly_map).max() < 0.05
    embeddings = [p.sam.embed([image]) for p in (fp32, bf16)]
    assert embeddings[1].dtype == torch.float32  # cached features are always float
    relative = (embeddings[0] - embeddings[1]).norm() / embeddings[0].norm()
    assert 0 < relative < 0.02


def test_bf16_pipelines_hold_encoder_weights_in_bf16_bit_identically(make_tiny):
    """Autocast casts frozen weights again on every call, so a bf16 pipeline holds its
    encoders' matmul weights in bf16 once: the CLIP features and SAM embedding are the very
    bits that fp32 weights under the same autocast give; norms and the text tower stay fp32."""
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    held, plain = make_tiny(precision="bf16"), make_tiny(precision="fp32")
    plain.clip.autocast_dtype = torch.bfloat16
    plain.sam.set_precision(torch.bfloat16)
    visual, encoder = held.clip.visual, held.sam.sam.image_encoder
    assert visual.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.bfloat16
    assert visual.proj.dtype == torch.bfloat16 and visual.conv1.weight.dtype == torch.bfloat16
    assert encoder.blocks[0].mlp.lin1.weight.dtype == torch.bfloat16
    assert visual.ln_post.weight.dtype == torch.float32
    assert encoder.blocks[0].attn.rel_pos_h.dtype == torch.float32
    assert held.clip.model.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float32
    pixels = held.clip.preprocess([image])
    ours, theirs = held.clip.encode_images(pixels), plain.clip.encode_images(pixels)
    assert set(ours) == set(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert torch.equal(held.sam.embed([image]), plain.sam.embed([image]))


@pytest.mark.parametrize("multimask", [False, True])
def test_fast_sam_decoder_matches_stock(make_tiny, multimask):
    """Shared image tokens, folded attention, sub-pixel upscaling: the stock decoder's output."""
    sam = make_tiny().sam
    stock = copy.deepcopy(sam.sam.mask_decoder)
    disable_fast_decoder(stock)
    assert "predict_masks" in sam.sam.mask_decoder.__dict__  # the pipeline's SAM uses it
    torch.manual_seed(1)
    dim = sam.sam.prompt_encoder.embed_dim
    embedding = torch.randn(1, dim, 16, 16)
    points = (torch.rand(5, 2, 2) * 256, torch.ones(5, 2, dtype=torch.int))
    boxes = torch.tensor([[10.0, 20, 100, 120]] * 5) + torch.arange(5)[:, None] * 7
    sparse, dense = sam.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    args = {"image_embeddings": embedding, "image_pe": sam.sam.prompt_encoder.get_dense_pe(),
            "sparse_prompt_embeddings": sparse, "dense_prompt_embeddings": dense,
            "multimask_output": multimask}  # fmt: skip
    with torch.inference_mode():
        masks, iou = sam.sam.mask_decoder(**args)
        expected_masks, expected_iou = stock(**args)
    assert masks.shape == expected_masks.shape and iou.shape == expected_iou.shape
    assert torch.allclose(masks, expected_masks, atol=1e-4, rtol=1e-4)
    assert torch.allclose(iou, expected_iou, atol=1e-5)
    with torch.inference_mode():  # a mask prompt (per-prompt dense input) takes the stock path
        dense_masks = torch.randn(5, dim, 16, 16)
        got, _ = sam.sam.mask_decoder(**{**args, "dense_prompt_embeddings": dense_masks})
        want, _ = stock(**{**args, "dense_prompt_embeddings": dense_masks})
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_int8_option_quantises_the_encoders_linear_layers_only(make_tiny):
    """``quantize="int8"`` (never the default) swaps the linear layers of CLIP's visual tower
    and SAM's image encoder for int8 dynamic ones and keeps the outputs close to fp32 (random
    weights here; the agreement on trained weights is tests/miniature/test_int8.py)."""
    from clipsam.quantize import _is_int8

    fp32, int8 = make_tiny(), make_tiny(quantize="int8")
    assert fp32.config.quantize == "none"
    assert not any(_is_int8(m) for m in fp32.clip.modules())
    blocks = int8.clip.visual.transformer.resblocks
    assert all(_is_int8(b.int8_in_proj) and _is_int8(b.mlp.c_fc) for b in blocks)
    assert all(
        _is_int8(b.attn.qkv) and _is_int8(b.mlp.lin2) for b in int8.sam.sam.image_encoder.blocks
    )
    assert not any(_is_int8(m) for m in int8.clip.model.transformer.modules())  # text tower
    pixels = torch.randn(2, 3, 224, 224)
    a, b = fp32.clip.encode_images(pixels)["stages"], int8.clip.encode_images(pixels)["stages"]
    assert float((a - b).norm() / a.norm()) < 0.05
    images = [np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)]
    a, b = fp32.sam.embed(images), int8.sam.embed(images)
    assert float((a - b).norm() / a.norm()) < 0.05
