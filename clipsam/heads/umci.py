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

from clipsam.attention import Projections, attention
from clipsam.heads.base import AnomalyHead


def attend_text(attn: nn.MultiheadAttention, query: Tensor, keys: Tensor) -> Tensor:
    """``attn(query, keys, keys)[0]``: with only the 2 text rows as keys, through
    :func:`clipsam.attention.attention`, which folds the projections into them (the same
    function and parameters, so checkpoints are unchanged; the head's matmuls halve)."""
    usable = (
        attn.batch_first and attn._qkv_same_embed_dim and attn.in_proj_bias is not None
        and attn.bias_k is None and not attn.add_zero_attn
        and (attn.dropout == 0.0 or not attn.training)
    )  # fmt: skip
    if not usable:
        return attn(query, keys, keys, need_weights=False)[0]
    return attention(query, keys, keys, Projections.of_mha(attn))


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
        batch = tokens.shape[0]
        x = self.norm(self.proj(tokens)).reshape(batch, grid, grid, -1)
        keys = text.unsqueeze(0).expand(batch, -1, -1)
        branches = []
        if self.paths in ("both", "strip"):
            branches.append(self._strip(x, keys))
        if self.paths in ("both", "scale"):
            branches.append(self._scale(x, keys))
        fused = x + self.fuse(torch.cat(branches, dim=-1))
        return fused.reshape(batch, grid * grid, -1)

    def _strip(self, x: Tensor, keys: Tensor) -> Tensor:
        rows, cols = x.mean(dim=2), x.mean(dim=1)  # (B, N, C) each
        rows = rows + attend_text(self.strip_attn, rows, keys)
        cols = cols + attend_text(self.strip_attn, cols, keys)
        return x + rows[:, :, None] + cols[:, None, :]

    def _scale(self, x: Tensor, keys: Tensor) -> Tensor:
        batch, grid, _, dim = x.shape
        channels_first = x.permute(0, 3, 1, 2)
        outputs = []
        for k in self.scales:
            pooled = F.avg_pool2d(
                channels_first, k, stride=1, padding=k // 2, count_include_pad=False
            )
            seq = pooled.permute(0, 2, 3, 1).reshape(batch, grid * grid, dim)
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
