"""Opt-in: the frozen encoders compiled by TorchInductor, for processes that live long.

Compiling fuses what eager mode runs as separate passes over the activations (autocast's
casts, LayerNorm, GELU, residual adds, the windows' layout copies) and, with ``freezing``,
folds the frozen weights in as constants pre-packed for the matmul kernels. Measured on an AMX
CPU under bf16 (README, Benchmarks): 0.73-0.87x eager for SAM's encoder and 0.86x for CLIP's.
But it costs 40-110 s per process (less with Inductor's on-disk cache) and again for every new
input shape, so it is off by default (``PipelineConfig.compile``) and compiles exactly one
shape: one image per call, at load time, before any request.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from clipsam.clip_backbone import ClipBackbone
    from clipsam.sam_backbone import SamBackbone

logger = logging.getLogger(__name__)

#: Inductor options: frozen weights become constants (pre-packed for oneDNN on CPU).
OPTIONS = {"freezing": True}


def compile_encoders(clip: ClipBackbone, sam: SamBackbone | None) -> float:
    """Compile CLIP's image forward and SAM's image encoder, then run one blank image through
    each (the compile happens there, in the autocast and grad mode they serve in). Returns the
    seconds it took."""
    start = time.perf_counter()
    clip.compiled = torch.compile(clip._encode_images, dynamic=False, options=OPTIONS)
    size = clip.config.image_size
    clip.encode_images(torch.zeros(1, 3, size, size, device=clip.device))
    if sam is not None:
        sam.compiled_encoder = torch.compile(sam.sam.image_encoder, dynamic=False, options=OPTIONS)
        sam.embed([np.zeros((sam.img_size, sam.img_size, 3), dtype=np.uint8)])
    seconds = time.perf_counter() - start
    logger.info("encoders compiled (TorchInductor, freezing) in %.1f s", seconds)
    return seconds
