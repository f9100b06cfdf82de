"""Few-shot normal memory (issue 15, item 3): good references of an unseen category raise its
held-out pixel AUROC at once, without training anything; broken memories do not."""

from __future__ import annotations

import pytest

from clipsam.data.world import HELDOUT_CATEGORIES
from training.miniature import fewshot

pytestmark = pytest.mark.slow

#: k = 4 good references per held-out category. Measured on the 64 held-out images: 0.874
#: without a memory, 0.910 with it (k = 1: 0.896, 2: 0.904, 8: 0.910); a memory of another
#: held-out category gives 0.867 and the memory's map upside down 0.609.
K = 4
FEWSHOT_BAR = 0.895


@pytest.fixture(scope="module")
def memories(micro):
    return {c: fewshot.memory_of(micro, fewshot.references(c, K)) for c in HELDOUT_CATEGORIES}


def test_good_references_raise_heldout_pixel_auroc(micro, heldout_features, memories):
    without = fewshot.pixel_auroc(micro, heldout_features, dict.fromkeys(memories))
    assert without < FEWSHOT_BAR  # the bar is above what the zero-shot map reaches alone
    assert fewshot.pixel_auroc(micro, heldout_features, memories) >= FEWSHOT_BAR


def test_another_categorys_memory_falls_below_that_bar(micro, heldout_features, memories):
    """Break: each category is served the memory of the next held-out category."""
    order = list(HELDOUT_CATEGORIES)
    swapped = {c: memories[order[(i + 1) % len(order)]] for i, c in enumerate(order)}
    assert fewshot.pixel_auroc(micro, heldout_features, swapped) < FEWSHOT_BAR


def test_the_blend_upside_down_falls_below_that_bar(micro, heldout_features, memories):
    """Break: the memory's map enters the blend with its sign flipped."""
    assert fewshot.pixel_auroc(micro, heldout_features, memories, flip=True) < FEWSHOT_BAR
