"""What a newcomer's ``CLIPSAM_PRESET=tiny`` serves: the shipped micro models, not noise.

The ``tiny`` preset loads micro-CLIP and micro-SAM (``clipsam/model_weights``) unless told
``weights="random"``. On held-out world images, measured: regions on 7 of 16 defective images,
5 of them on the defect, and on 1 of 16 good images; the same preset with random weights puts
a region on none (its map is flat noise under the thresholds), so the bars below fail for it.
"""

from __future__ import annotations

import pytest

import clipsam
from clipsam.data.world import HELDOUT_CATEGORIES
from training.miniature import protocol

pytestmark = pytest.mark.slow


def _shown(pipeline) -> tuple[int, int]:
    """(defective images with a region on their defect, good images with any region)."""
    on_defect = on_good = 0
    for image in protocol.world_images(HELDOUT_CATEGORIES, 8, 0.5, seed=5):
        [prediction] = pipeline.predict([image.image], image.category)
        if image.mask.any():
            on_defect += any((r.mask & image.mask).any() for r in prediction.regions)
        else:
            on_good += bool(prediction.regions)
    return on_defect, on_good


def test_the_tiny_preset_serves_the_shipped_models_and_finds_defects():
    pipeline = clipsam.load_pipeline("tiny")
    info = pipeline.info()
    assert not info["random_weights"] and info["sam_backbone"] == "sam-tiny/micro_sam"
    on_defect, on_good = _shown(pipeline)
    assert on_defect >= 4 and on_good <= 3, (on_defect, on_good)


def test_random_weights_miss_that_bar():
    on_defect, _ = _shown(clipsam.load_pipeline("tiny", weights="random"))
    assert on_defect < 4
