"""Shared fixtures: tiny random-weight pipelines and synthetic defect data, built once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests never download or read a user's weights: an empty cache dir, offline.
os.environ["CLIPSAM_OFFLINE"] = "1"
for _name in ("CLIPSAM_CLIP_WEIGHTS", "CLIPSAM_SAM_CHECKPOINT", "CLIPSAM_HEAD"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True, scope="session")
def _isolated_weights_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["CLIPSAM_HOME"] = str(tmp_path_factory.mktemp("clipsam_home"))


@pytest.fixture(scope="session")
def tiny_pipeline():
    """A shared tiny pipeline with a (random) UMCI head; do not mutate it in tests."""
    import clipsam

    return clipsam.load_pipeline("tiny", weights="random", head="umci")


@pytest.fixture
def make_tiny():
    """Factory for private tiny pipelines that a test may mutate (head swaps, counters)."""
    import clipsam

    def build(**overrides):
        overrides.setdefault("head", "umci")
        overrides.setdefault("weights", "random")
        return clipsam.load_pipeline("tiny", **overrides)

    return build


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One category, 60 defect and 10 good test images (128×128), MVTec-AD layout."""
    from clipsam.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, categories=("widget",), n_good=10, n_defect=60, seed=0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run with end-to-end tests starts their Label Studio now, in the background."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("labelstudio") for item in session.items):
        from tests import label_studio_launch

        label_studio_launch.start_early()


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests import label_studio_launch

    label_studio_launch.stop_unclaimed()
