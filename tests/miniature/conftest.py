"""The miniature world's trained backbones and data, built once per session.

Heads train on the world's training categories and are judged on its held-out categories,
which no objective (micro-CLIP, micro-SAM, the heads) ever saw.
"""

from __future__ import annotations

import pytest

import clipsam
from clipsam.data.world import HELDOUT_CATEGORIES
from training.miniature import protocol


@pytest.fixture(scope="session")
def micro():
    """The shipped micro-CLIP with its training-free head, SAM off (the coarse map)."""
    return clipsam.load_pipeline("tiny", weights="pretrained", use_sam=False)


@pytest.fixture(scope="session")
def heldout():
    return protocol.world_images(HELDOUT_CATEGORIES, 16, 0.6, seed=1)


@pytest.fixture(scope="session")
def heldout_features(micro, heldout):
    return protocol.features(micro, heldout)
