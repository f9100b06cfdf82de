"""UMCI: Unified Multi-scale Cross-modal Interaction (method spec §2).

Per tapped stage: project patch tokens into the text space, then let two paths attend to the
text features T: a *strip* path over row and column means (long-range context along each axis)
and a *scale* path over average-pooled neighbourhoods (local context at several sizes); fuse.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipsam.attention import FewKeys, Projections, attention
from clipsam.heads.base import AnomalyHead


def foldable(attn: nn.MultiheadAttention) -> bool:
    """Whether ``attn`` is plain enough for :mod:`clipsam.attention`'s folded routes."""
    return (
        attn.batch_first and attn._qkv_same_embed_dim and attn.in_proj_bias is not None
        and attn.bias_k is None and not attn.add_zero_attn
        and (attn.dropout == 0.0 or not attn.training)
    )  # fmt: skip


def attend_text(attn: nn.MultiheadAttention, query: Tensor, keys: Tensor) -> Tensor:
    """``attn(query, keys, keys)[0]``: with only the 2 text rows as keys, through
    :func:`clipsam.attention.attention`, which folds the projections into them (the same
    function and parameters, so checkpoints are unchanged; the head's matmuls halve)."""
    if not foldable(attn):
        return attn(query, keys, keys, need_weights=False)[0]
    return attention(query, keys, keys, Projections.of_mha(attn))


def _pool(grid_first: Tensor, k: int) -> Tensor:
    """AvgPool(k, stride 1, same padding) of (B, C, N, N), padding not counted."""
    return F.avg_pool2d(grid_first, k, stride=1, padding=k // 2, count_include_pad=False)


class UMCIStage(nn.Module):
    """One stage: X = LN(Linear(P)); strip path S; scale path M; F = X + Linear([S; M])."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        paths: str,
        scales: tuple[int, ...],
        strip_attn: nn.MultiheadAttention,
        scale_attn: nn.MultiheadAttention,
    ) -> None:
        super().__init__()
        self.paths = paths
        self.scales = scales
        self.proj = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.strip_attn = strip_attn
        self.scale_attn = scale_attn
        branches = 2 if paths == "both" else 1
        self.fuse = nn.Linear(branches * dim, dim)

    def forward(self, tokens: Tensor, text: Tensor, grid: int) -> Tensor:
        """F = X + Linear([S; M]), taken as X + S·W_Sᵀ + M·W_Mᵀ + b (the fusion's weight split
        by branch): the same function without the concatenated copy of both branches."""
        batch = tokens.shape[0]
        x = self.norm(self.proj(tokens)).reshape(batch, grid, grid, -1)
        keys = text.unsqueeze(0).expand(batch, -1, -1)
        branches = []
        if self.paths in ("both", "strip"):
            branches.append(self._strip(x, keys))
        if self.paths in ("both", "scale"):
            branches.append(self._scale(x, keys))
        dim = x.shape[-1]
        blocks = self.fuse.weight.split(dim, dim=1)  # (C, C) per branch
        fused = torch.addmm(self.fuse.bias, branches[0].reshape(-1, dim), blocks[0].t())
        for branch, block in zip(branches[1:], blocks[1:], strict=True):
            fused = torch.addmm(fused, branch.reshape(-1, dim), block.t())  # autocast casts it
        return (x.reshape(-1, dim) + fused).reshape(batch, grid * grid, -1)

    def _strip(self, x: Tensor, keys: Tensor) -> Tensor:
        rows, cols = x.mean(dim=2), x.mean(dim=1)  # (B, N, C) each
        rows = rows + attend_text(self.strip_attn, rows, keys)
        cols = cols + attend_text(self.strip_attn, cols, keys)
        return x + rows[:, :, None] + cols[:, None, :]

    def _scale(self, x: Tensor, keys: Tensor) -> Tensor:
        """M = mean over k of (X_k + MHA₂(X_k, T, T)), X_k = AvgPool_k(X).

        Average pooling is a convex combination at each position, and the attention's scores
        are linear in the query (:class:`clipsam.attention.FewKeys`), so the scores of X_k are
        the pooled scores of X: pooled on 2 · heads channels instead of C. The outputs are linear
        in the probabilities, so the mean over k is one matmul of the mean probabilities. The
        same function; :meth:`_scale_per_k` computes it directly (where the MHA cannot be
        folded, and in the tests)."""
        if not foldable(self.scale_attn):
            return self._scale_per_k(x, keys)
        batch, grid, _, dim = x.shape
        folded = FewKeys.fold(keys[:1], keys[:1], Projections.of_mha(self.scale_attn))
        _, heads, n_keys, _ = folded.query_weights.shape
        scores = x.reshape(-1, dim) @ folded.query_weights[0].flatten(0, 1).t()  # (B·N², H·L)
        score_grid = scores.reshape(batch, grid, grid, -1).permute(0, 3, 1, 2)
        channels_first = x.permute(0, 3, 1, 2)
        pooled_sum, probs_sum = None, None
        for k in self.scales:
            pooled = x if k == 1 else _pool(channels_first, k).permute(0, 2, 3, 1)
            pooled_scores = score_grid if k == 1 else _pool(score_grid, k)
            logits = pooled_scores.reshape(batch, heads, n_keys, -1) + folded.query_bias[..., None]
            probs = logits.softmax(dim=2)
            pooled_sum = pooled if pooled_sum is None else pooled_sum + pooled
            probs_sum = probs if probs_sum is None else probs_sum + probs
        assert pooled_sum is not None and probs_sum is not None
        count = len(self.scales)
        attended = folded.output(probs_sum / count).reshape(batch, grid, grid, dim)
        return pooled_sum / count + attended

    def _scale_per_k(self, x: Tensor, keys: Tensor) -> Tensor:
        """:meth:`_scale` as the spec writes it: pool, attend, add, for each k; then the mean."""
        batch, grid, _, dim = x.shape
        channels_first = x.permute(0, 3, 1, 2)
        outputs = []
        for k in self.scales:
            seq = _pool(channels_first, k).permute(0, 2, 3, 1).reshape(batch, grid * grid, dim)
            seq = seq + attend_text(self.scale_attn, seq, keys)
            outputs.append(seq)
        return torch.stack(outputs).mean(dim=0).reshape(batch, grid, grid, dim)


class UMCIHead(AnomalyHead):
    """UMCI over all tapped stages; logits (B, S, 2, N, N)."""

    kind = "umci"

    def __init__(
        self,
        backbone_id: str,
        in_dim: int,
        dim: int,
        stages: int,
        grid: int,
        paths: str = "both",
        scales: tuple[int, ...] = (1, 3, 5),
        attn_heads: int = 8,
        share_attn: bool = False,
        logit_scale: float = 100.0,
    ) -> None:
        if paths not in ("both", "strip", "scale"):
            raise ValueError(f"paths must be 'both', 'strip' or 'scale', got {paths!r}")
        if any(k < 1 or k % 2 == 0 for k in scales):
            raise ValueError(f"scales must be odd kernel sizes ≥ 1, got {scales}")
        options: dict[str, Any] = dict(
            in_dim=in_dim, dim=dim, stages=stages, grid=grid, paths=paths, scales=list(scales),
            attn_heads=attn_heads, share_attn=share_attn, logit_scale=logit_scale,
        )  # fmt: skip
        super().__init__(backbone_id, options)
        self.grid = grid
        self.logit_scale = logit_scale

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(dim, attn_heads, batch_first=True)

        shared = (attention(), attention()) if share_attn else None
        self.shared_attn = nn.ModuleList(shared) if shared else None
        self.stages = nn.ModuleList(
            UMCIStage(in_dim, dim, paths, tuple(scales), *(shared or (attention(), attention())))
            for _ in range(stages)
        )

    def stage_tokens(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        tokens = features["stages"].float()
        text = text.float()
        return torch.stack(
            [stage(tokens[:, i], text, self.grid) for i, stage in enumerate(self.stages)], dim=1
        )
