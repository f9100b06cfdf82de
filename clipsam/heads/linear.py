"""The ``linear`` head: one Linear per stage (APRIL-GAN style), a cheap baseline.

``from_aprilgan`` loads APRIL-GAN's released checkpoints (``{"trainable_linearlayer":
{"fc.0.weight", ...}}``), which were trained on ViT-L-14-336 at 518² with plain GELU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from clipsam.heads.base import AnomalyHead


class LinearHead(AnomalyHead):
    kind = "linear"

    def __init__(
        self, backbone_id: str, in_dim: int, dim: int, stages: int, grid: int,
        logit_scale: float = 100.0,
    ) -> None:  # fmt: skip
        options = dict(in_dim=in_dim, dim=dim, stages=stages, grid=grid, logit_scale=logit_scale)
        super().__init__(backbone_id, options)
        self.grid = grid
        self.logit_scale = logit_scale
        self.fc = nn.ModuleList(nn.Linear(in_dim, dim) for _ in range(stages))

    def stage_tokens(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        tokens = features["stages"].float()
        return torch.stack([fc(tokens[:, i]) for i, fc in enumerate(self.fc)], dim=1)


def load_aprilgan_state(path: str | Path) -> dict[str, Tensor]:
    """The ``fc.*`` tensors of an APRIL-GAN checkpoint, loaded without unpickling code."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    state = checkpoint.get("trainable_linearlayer", checkpoint)
    if not isinstance(state, dict) or not any(k.startswith("fc.") for k in state):
        raise ValueError(f"{path} is not an APRIL-GAN linear-layer checkpoint (no 'fc.*' tensors)")
    return {k: v for k, v in state.items() if k.startswith("fc.")}
