"""Multi-head attention that takes the cheapest exact route when one side has few tokens.

Both attentions this project runs over thousands of image tokens look at a handful of tokens
on the other side: UMCI's patches attend to the 2 text rows; SAM's two-way transformer lets 9
prompt tokens and 4096 image tokens attend to each other. Per head h, the scores are
``(X W_q,h)(Y W_k,h)ᵀ``; when Y has few rows, ``W_q,hᵀ (Y W_k,h)ᵀ`` is a small matrix and
every image token needs one narrow matmul with it instead of a full projection. The value and
output projections fold the same way. Same function and parameters; only float rounding
differs. :func:`attention` picks the route with the fewest multiply-adds for the shapes given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Linear = tuple[Tensor, Tensor]  # (weight (out, in), bias (out,))


@dataclass(frozen=True)
class Projections:
    """The q, k, v and output projections of an attention layer with ``heads`` heads."""

    q: Linear
    k: Linear
    v: Linear
    out: Linear
    heads: int

    @classmethod
    def of_mha(cls, attn: nn.MultiheadAttention) -> Projections:
        """From ``nn.MultiheadAttention`` with packed, biased in-projections."""
        assert attn.in_proj_weight is not None and attn.in_proj_bias is not None
        weights, biases = attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)
        q, k, v = zip(weights, biases, strict=True)
        out = (attn.out_proj.weight, attn.out_proj.bias)
        return cls(q, k, v, out, attn.num_heads)

    @classmethod
    def of_linears(
        cls, q: nn.Linear, k: nn.Linear, v: nn.Linear, out: nn.Linear, heads: int
    ) -> Projections:
        return cls(
            (q.weight, q.bias),
            (k.weight, k.bias),
            (v.weight, v.bias),
            (out.weight, out.bias),
            heads,
        )


def attention(query: Tensor, keys: Tensor, values: Tensor, proj: Projections) -> Tensor:
    """``out(softmax(q(query)·k(keys)ᵀ/√d)·v(values))`` for (B, N, E) inputs (B broadcasts)."""
    route = cheapest_route(query.shape, keys.shape, values.shape, proj)
    return _ROUTES[route](query, keys, values, proj)


def cheapest_route(
    query: Sequence[int], keys: Sequence[int], values: Sequence[int], proj: Projections
) -> str:
    """``"stock"``, ``"few_keys"`` or ``"few_queries"``: the fewest multiply-adds for these
    (B, N, E) shapes (the small folding matmuls are left out)."""
    batch = max(query[0], keys[0], values[0])
    n_q, n_k = query[1], keys[1]
    inner, dim = proj.q[0].shape
    heads = proj.heads
    projections_kv = inner * dim * n_k * (keys[0] + values[0])
    costs = {
        "stock": projections_kv
        + inner * dim * n_q * (query[0] + batch)
        + 2 * batch * n_q * n_k * inner,
        "few_keys": projections_kv + 2 * batch * n_q * heads * n_k * dim,
        "few_queries": inner * dim * n_q * (query[0] + 2 * batch)
        + 2 * batch * heads * n_q * n_k * dim,
    }
    return min(costs, key=costs.__getitem__)


def _stock(query: Tensor, keys: Tensor, values: Tensor, proj: Projections) -> Tensor:
    q, k, v = (
        F.linear(x, *p).unflatten(-1, (proj.heads, -1)).transpose(1, 2)
        for x, p in ((query, proj.q), (keys, proj.k), (values, proj.v))
    )
    out = F.scaled_dot_product_attention(q, k, v)
    return F.linear(out.transpose(1, 2).flatten(2), *proj.out)


@dataclass(frozen=True)
class FewKeys:
    """An attention to a few keys, folded (the ``few_keys`` route): per head h and key l, a
    query x scores ``query_weights[h, l] · x + query_bias[h, l]`` and the output is
    ``Σ probs · values + out_bias``. Both are linear in the query, so a linear map of the queries
    (UMCI's average pooling) can be applied to the scores instead: one narrow channel per head
    and key, not the query's E."""

    query_weights: Tensor  # (B, H, L, E), B may be 1
    query_bias: Tensor  # (B, H, L)
    values: Tensor  # (B, H, L, E): the values through W_v and then W_o
    out_bias: Tensor  # (E,)

    @classmethod
    def fold(cls, keys: Tensor, values: Tensor, proj: Projections) -> FewKeys:
        heads = proj.heads
        (w_q, b_q), (w_o, b_o) = proj.q, proj.out
        inner, dim = w_q.shape
        head_dim = inner // heads
        k = F.linear(keys, *proj.k).unflatten(-1, (heads, head_dim))  # (B, L, H, d)
        v = F.linear(values, *proj.v).unflatten(-1, (heads, head_dim))
        scale = head_dim**-0.5
        folded_q = torch.einsum("hde,blhd->bhle", w_q.view(heads, head_dim, dim), k) * scale
        bias_q = torch.einsum("hd,blhd->bhl", b_q.view(heads, head_dim), k) * scale
        folded_v = torch.einsum("blhd,ehd->bhle", v, w_o.view(-1, heads, head_dim))
        return cls(folded_q, bias_q, folded_v, b_o)

    def scores(self, query: Tensor) -> Tensor:
        """(B, H, L, N) scores of (B, N, E) queries, without ``query_bias``. As (B, H·L, N): the
        softmax over the L keys then runs across long contiguous rows of N (vectorised)."""
        scores = _matmul(self.query_weights.flatten(1, 2), query.transpose(1, 2))
        return scores.unflatten(1, self.query_weights.shape[1:3])

    def output(self, probs: Tensor) -> Tensor:
        """(B, N, E) outputs for (B, H, L, N) probabilities (softmaxed over L)."""
        return _matmul(probs.flatten(1, 2).transpose(1, 2), self.values.flatten(1, 2)) + (
            self.out_bias
        )


def _few_keys(query: Tensor, keys: Tensor, values: Tensor, proj: Projections) -> Tensor:
    """Fold W_q into the projected keys and W_o into the projected values (:class:`FewKeys`)."""
    folded = FewKeys.fold(keys, values, proj)
    scores = folded.scores(query) + folded.query_bias[..., None]
    return folded.output(scores.softmax(dim=2))


def _few_queries(query: Tensor, keys: Tensor, values: Tensor, proj: Projections) -> Tensor:
    """Fold W_k into the projected queries; apply W_v after pooling the values (rows sum to 1)."""
    heads = proj.heads
    (w_k, b_k), (w_v, b_v) = proj.k, proj.v
    inner, dim = w_k.shape
    head_dim = inner // heads
    q = F.linear(query, *proj.q).unflatten(-1, (heads, head_dim)) * head_dim**-0.5
    folded_k = torch.einsum("bqhd,hde->bhqe", q, w_k.view(heads, head_dim, dim))
    bias_k = torch.einsum("bqhd,hd->bhq", q, b_k.view(heads, head_dim))
    n_queries = q.shape[1]
    scores = _matmul(folded_k.flatten(1, 2), keys.transpose(1, 2))  # (B, H·Q, N)
    probs = (scores + bias_k.flatten(1)[..., None]).softmax(dim=-1)
    pooled = _matmul(probs, values).unflatten(1, (heads, n_queries))  # (B, H, Q, E)
    out = torch.einsum("bhqe,hde->bqhd", pooled, w_v.view(heads, head_dim, dim))
    out = out + b_v.view(heads, head_dim)
    return F.linear(out.flatten(2), *proj.out)


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for (B, n, k) @ (B, k, m) where either B may be 1, without copying the
    broadcast operand B times (``torch.matmul`` expands it): one 2-D matmul instead."""
    if a.shape[0] == b.shape[0]:
        return a @ b
    if b.shape[0] == 1:
        return (a.flatten(0, 1) @ b[0]).unflatten(0, a.shape[:2])
    out = a[0] @ b.transpose(0, 1).flatten(1)  # (n, B·m)
    return out.unflatten(1, (b.shape[0], -1)).transpose(0, 1)


_ROUTES: dict[str, Callable[[Tensor, Tensor, Tensor, Projections], Tensor]] = {
    "stock": _stock,
    "few_keys": _few_keys,
    "few_queries": _few_queries,
}
