"""What every head shares: its identity (kind, knobs, backbone) and logits → anomaly maps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipsam.calibration import Thresholds
from clipsam.defect_types import TypeClassifier


class AnomalyHead(nn.Module):
    """A head turns frozen CLIP features and the text features T (2, E) into per-stage logits.

    Subclasses implement ``stage_tokens``; ``forward(features, text)`` returns their logits
    (B, S, 2, N, N) on the patch grid; channel 1 is "abnormal". ``options`` are the
    constructor knobs, saved with the weights so a file rebuilds the same module.
    """

    kind: str = ""

    def __init__(self, backbone_id: str, options: dict[str, Any]) -> None:
        super().__init__()
        self.backbone_id = backbone_id
        self.options = dict(options)
        self.version = "untrained"
        #: Operating points chosen on held-out data (``clipsam.calibration``); saved with the
        #: head, and the pipeline normalises its maps so they sit at 0.5. None: uncalibrated.
        self.thresholds: Thresholds | None = None
        #: Defect types learned from corrected regions (``clipsam.defect_types``); saved in the
        #: head file's metadata. None: regions are typed zero-shot.
        self.type_classifier: TypeClassifier | None = None

    #: Set by each head's constructor.
    grid: int
    logit_scale: float

    def stage_tokens(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        """The per-stage tokens (B, S, N², E) in the text space, before L2 normalisation, that
        the logits compare with T; image scores such as AdaCLIP's HSF cluster them."""
        raise NotImplementedError

    def forward(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        return stage_logits(self.stage_tokens(features, text), text, self.logit_scale, self.grid)


def text_logits(tokens: Tensor, text: Tensor, scale: float, grid: int) -> Tensor:
    """Cosine logits of tokens (B, N², E) against T (2, E) → (B, 2, N, N).

    ``F.normalize(tokens) @ T̂ᵀ`` computed as ``(tokens @ T̂ᵀ) / ‖tokens‖``: the same cosine
    (norms clamped at 1e-12 alike), without a normalised copy of the tokens, whose backward
    costs several passes over (B, N², E) in training; only float rounding differs."""
    norms = torch.linalg.vector_norm(tokens, dim=-1, keepdim=True).clamp_min(1e-12)
    logits = (tokens @ (scale * F.normalize(text, dim=-1)).T) / norms
    return logits.transpose(1, 2).reshape(tokens.shape[0], 2, grid, grid)


def stage_logits(tokens: Tensor, text: Tensor, scale: float, grid: int) -> Tensor:
    """Cosine logits of per-stage tokens (B, S, N², E) against T (2, E) → (B, S, 2, N, N)."""
    batch, stages = tokens.shape[:2]
    flat = text_logits(tokens.flatten(0, 1), text.float(), scale, grid)
    return flat.reshape(batch, stages, 2, grid, grid)


def stage_probabilities(logits: Tensor, size: int) -> Tensor:
    """Per-stage abnormal probability maps (B, S, size, size): the logits are upsampled
    bilinearly with ``align_corners=True``, then softmaxed, exactly as APRIL-GAN's ``test.py``
    (lines 179–181) does; training uses this same function."""
    batch, stages, _, grid, _ = logits.shape
    up = F.interpolate(
        logits.reshape(batch * stages, 2, grid, grid),
        size=(size, size),
        mode="bilinear",
        align_corners=True,
    )
    return torch.softmax(up, dim=1)[:, 1].reshape(batch, stages, size, size)


def coarse_map(logits: Tensor, size: int) -> Tensor:
    """The coarse anomaly map A (B, size, size) = mean over stages; stays in [0, 1]."""
    return stage_probabilities(logits, size).mean(dim=1)
