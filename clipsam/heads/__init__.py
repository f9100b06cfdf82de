"""Anomaly heads: UMCI (trainable, the method's own), linear (APRIL-GAN style), none (zero-shot)."""

from clipsam.heads.base import AnomalyHead, coarse_map, stage_probabilities
from clipsam.heads.io import (
    HeadLoadError,
    HeadMismatchError,
    build_head,
    head_from_aprilgan,
    load_head,
    read_head_metadata,
    save_head,
)
from clipsam.heads.linear import LinearHead
from clipsam.heads.umci import UMCIHead
from clipsam.heads.zero_shot import ZeroShotHead

__all__ = [
    "AnomalyHead",
    "HeadLoadError",
    "HeadMismatchError",
    "LinearHead",
    "UMCIHead",
    "ZeroShotHead",
    "build_head",
    "coarse_map",
    "head_from_aprilgan",
    "load_head",
    "read_head_metadata",
    "save_head",
    "stage_probabilities",
]
