"""Test doubles that are real modules: a head with a known map, and call counters."""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

from clipsam.heads import AnomalyHead


class BlobHead(AnomalyHead):
    """Logits with clearly abnormal 2×2 blobs at ``spots`` (grid cells); normal elsewhere."""

    kind = "blob"

    def __init__(self, backbone_id: str, grid: int, spots: list[tuple[int, int]]) -> None:
        super().__init__(backbone_id, {})
        self.grid = grid
        self.spots = spots
        self.version = "blob"

    def forward(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        batch = features["stages"].shape[0]
        logits = torch.zeros(batch, 1, 2, self.grid, self.grid)
        logits[:, :, 0] = 5.0
        for y, x in self.spots:
            logits[:, :, 1, y : y + 2, x : x + 2] = 10.0
        return logits


def count_backbone_calls(pipeline) -> Counter:
    """Counts images through CLIP and SAM's encoder, decoder calls and prompts per call."""
    calls: Counter = Counter()

    def clip_hook(module, args, output):
        calls["clip_images"] += args[0].shape[0]

    def encoder_hook(module, args, output):
        calls["sam_images"] += args[0].shape[0]

    def decoder_hook(module, args, kwargs, output):
        calls["decoder_calls"] += 1
        calls[f"prompts_{kwargs['sparse_prompt_embeddings'].shape[0]}"] += 1

    pipeline.clip.visual.conv1.register_forward_hook(clip_hook)
    if pipeline.sam is not None:
        pipeline.sam.sam.image_encoder.register_forward_hook(encoder_hook)
        pipeline.sam.sam.mask_decoder.register_forward_hook(decoder_hook, with_kwargs=True)
    return calls
