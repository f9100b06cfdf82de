"""Focal + dice on per-stage probability maps (method spec §5), summed over stages."""

from __future__ import annotations

import torch
from torch import Tensor


def focal_loss(probs: Tensor, target: Tensor, gamma: float = 2.0, eps: float = 1e-6) -> Tensor:
    """Binary focal loss on the abnormal probability (the 2-way softmax is implied)."""
    p_true = torch.where(target > 0.5, probs, 1.0 - probs).clamp(eps, 1.0)
    return (-((1.0 - p_true) ** gamma) * torch.log(p_true)).mean()


def dice_loss(probs: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 − Dice of the abnormal channel, per image then averaged."""
    dims = tuple(range(1, probs.ndim))
    overlap = (probs * target).sum(dims)
    return (1.0 - (2.0 * overlap + eps) / (probs.sum(dims) + target.sum(dims) + eps)).mean()


def stage_loss(stage_probs: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Σ over stages of focal + dice; ``stage_probs`` (B, S, H, W), ``target`` (B, H, W)."""
    total = stage_probs.new_zeros(())
    for s in range(stage_probs.shape[1]):
        probs = stage_probs[:, s]
        total = total + focal_loss(probs, target, gamma) + dice_loss(probs, target)
    return total
