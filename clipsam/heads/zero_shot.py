"""The training-free head (``head="none"``): value-value tokens against the text features.

It uses CLIP's own ``ln_post``/``proj`` (already applied by the backbone to the ``vv`` tokens),
so a fresh install gives sensible maps before any head is trained.
"""

from __future__ import annotations

from torch import Tensor

from clipsam.heads.base import AnomalyHead


class ZeroShotHead(AnomalyHead):
    kind = "none"

    def __init__(self, backbone_id: str, grid: int, logit_scale: float = 100.0) -> None:
        super().__init__(backbone_id, dict(grid=grid, logit_scale=logit_scale))
        self.grid = grid
        self.logit_scale = logit_scale
        self.version = "zero-shot"

    def stage_tokens(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        return features["vv"].float().unsqueeze(1)
