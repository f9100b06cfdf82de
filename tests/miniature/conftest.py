"""The miniature world's trained backbones and data, built once per session.

Heads train on the world's training categories and are judged on its held-out categories,
which no objective (micro-CLIP, micro-SAM, the heads) ever saw.
"""

from __future__ import annotations

import pytest

import clipsam
from clipsam.data.world import HELDOUT_CATEGORIES, TRAIN_CATEGORIES
from training.miniature import protocol


@pytest.fixture(scope="session")
def micro():
    """The ``tiny`` preset as shipped: micro-CLIP and micro-SAM, training-free head."""
    return clipsam.load_pipeline("tiny")


@pytest.fixture(scope="session")
def heldout():
    return protocol.world_images(HELDOUT_CATEGORIES, 16, 0.6, seed=1)


@pytest.fixture(scope="session")
def heldout_defective(heldout):
    return [item for item in heldout if item.mask.any()]


@pytest.fixture(scope="session")
def heldout_features(micro, heldout):
    return protocol.features(micro, heldout)


@pytest.fixture(scope="session")
def train_features(micro):
    return protocol.features(micro, protocol.world_images(TRAIN_CATEGORIES, 10, 0.6, seed=2))


@pytest.fixture(scope="session")
def umci(micro, train_features):
    return protocol.train(micro, train_features, "umci")


@pytest.fixture(scope="session")
def linear(micro, train_features):
    return protocol.train(micro, train_features, "linear")
