"""Every route of clipsam.attention computes the stock attention layers' function."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling.transformer import Attention as SamAttention
from torch import nn

from clipsam.attention import _ROUTES, Projections, attention, cheapest_route


def sam_attention(dim: int = 32, heads: int = 4, downsample: int = 2) -> SamAttention:
    torch.manual_seed(0)
    layer = SamAttention(dim, heads, downsample_rate=downsample).double()
    for linear in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
        nn.init.normal_(linear.bias)  # zero biases at init would hide a bias bug
    return layer


@pytest.mark.parametrize("route", sorted(_ROUTES))
@pytest.mark.parametrize(
    ("q_shape", "kv_shape"),
    [
        ((3, 50, 32), (3, 5, 32)),  # few keys, one batch
        ((3, 5, 32), (3, 50, 32)),  # few queries
        ((1, 50, 32), (3, 5, 32)),  # shared image tokens against per-prompt tokens
        ((3, 5, 32), (1, 50, 32)),  # per-prompt tokens against shared image tokens
    ],
)
def test_each_route_matches_segment_anythings_attention(route, q_shape, kv_shape):
    layer = sam_attention()
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(q_shape, generator=generator, dtype=torch.float64)
    keys = torch.randn(kv_shape, generator=generator, dtype=torch.float64)
    values = torch.randn(kv_shape, generator=generator, dtype=torch.float64)
    proj = Projections.of_linears(
        layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj, layer.num_heads
    )
    with torch.no_grad():
        expected = layer(query, keys, values)
        got = _ROUTES[route](query, keys, values, proj)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-10), (got - expected).abs().max()


def test_routes_match_multihead_attention_with_gradients():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(24, 3, batch_first=True).double()
    nn.init.normal_(mha.in_proj_bias)
    query = torch.randn(2, 40, 24, dtype=torch.float64)
    keys = torch.randn(2, 2, 24, dtype=torch.float64)
    expected = mha(query, keys, keys, need_weights=False)[0]
    expected.square().sum().backward()
    want = mha.in_proj_weight.grad.clone()
    mha.zero_grad()
    got = attention(query, keys, keys, Projections.of_mha(mha))
    got.square().sum().backward()
    assert torch.allclose(got, expected, atol=1e-10)
    assert torch.allclose(mha.in_proj_weight.grad, want, atol=1e-9)


def test_the_cheapest_route_is_taken_for_sams_and_umcis_shapes():
    sam = Projections.of_linears(*(nn.Linear(256, 128) for _ in range(3)), nn.Linear(128, 256), 8)
    # Two-way transformer, K = 5 prompts of 9 tokens, 64×64 image tokens.
    assert cheapest_route((5, 9, 256), (5, 4096, 256), (5, 4096, 256), sam) == "few_queries"
    assert cheapest_route((5, 4096, 256), (5, 9, 256), (5, 9, 256), sam) == "few_keys"
    # First block: the image tokens are still shared (batch 1): projecting them once is cheaper.
    assert cheapest_route((5, 9, 256), (1, 4096, 256), (1, 4096, 256), sam) == "stock"
    # Comparable token counts on both sides: nothing to fold.
    assert cheapest_route((2, 300, 256), (2, 300, 256), (2, 300, 256), sam) == "stock"
    umci = Projections.of_mha(nn.MultiheadAttention(768, 8, batch_first=True))
    assert cheapest_route((1, 1369, 768), (1, 2, 768), (1, 2, 768), umci) == "few_keys"
