"""Typed defects of the miniature world, as a multi-label project would see them.

Each image holds one defect of a known kind, and the kinds come round-robin, so a slice of
``per_type × 7`` images teaches every kind equally. The label names are what a person would
put in a label config ("Missing piece"), not the generator's identifiers.
"""

from __future__ import annotations

import numpy as np

from clipsam.data.world import WORLD_DEFECT_TYPES, WorldSample, render_sample

#: The world's defect kinds as label names in a config, in :data:`WORLD_DEFECT_TYPES` order.
TYPE_LABELS: tuple[str, ...] = tuple(k.replace("_", " ").capitalize() for k in WORLD_DEFECT_TYPES)


def typed_samples(
    category: str, per_type: int, seed: int, size: tuple[int, int] = (224, 224)
) -> list[tuple[WorldSample, str]]:
    """``per_type`` images of each kind (one defect each) and its label name."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(per_type * len(WORLD_DEFECT_TYPES)):
        kind = WORLD_DEFECT_TYPES[index % len(WORLD_DEFECT_TYPES)]
        sample = render_sample(category, rng, size, (kind,))
        if sample.mask.any():
            out.append((sample, TYPE_LABELS[index % len(WORLD_DEFECT_TYPES)]))
    return out
