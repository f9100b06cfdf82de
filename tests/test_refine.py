"""MMR pieces on hand-made maps: components, prompts, fusion."""

from __future__ import annotations

import numpy as np
import pytest

from clipsam.config import MMRConfig
from clipsam.refine import find_components, prompts_for


def test_components_are_8_connected_area_filtered_and_ranked_by_peak():
    amap = np.zeros((100, 100), dtype=np.float32)
    amap[10, 10] = amap[11, 11] = amap[12, 12] = 0.9  # diagonal chain: one component of 3 px
    amap[50:60, 50:70] = 0.7
    amap[55, 60] = 0.95  # the peak of the big component
    amap[90, 5] = 0.99  # a single pixel: under the area limit of 2 px
    config = MMRConfig(tau=0.5, min_area_frac=2e-4)
    components = find_components(amap, config)
    assert [c.mask.sum() for c in components] == [200, 3]
    big, chain = components
    assert big.peak == (60, 55) and big.peak_score == pytest.approx(0.95)
    assert big.box == (50, 50, 70, 60)
    assert chain.box == (10, 10, 13, 13)
    assert big.centroid == pytest.approx((59.5, 54.5))


def test_top_k_keeps_the_highest_peaks():
    amap = np.zeros((40, 40), dtype=np.float32)
    for i in range(6):
        amap[2 + 6 * i, 2:5] = 0.6 + 0.05 * i
    components = find_components(amap, MMRConfig(top_k=2, min_area_frac=0))
    assert [round(c.peak_score, 2) for c in components] == [0.85, 0.8]


def test_nothing_above_tau_gives_no_components():
    amap = np.full((30, 30), 0.5, dtype=np.float32)  # equal to τ is not above it
    assert find_components(amap, MMRConfig()) == []


def test_prompts_grow_boxes_and_clip_them_to_the_image():
    amap = np.zeros((50, 80), dtype=np.float32)
    amap[0:10, 60:80] = 0.8
    amap[20:30, 20:40] = 0.9
    config = MMRConfig(box_grow=0.1, centroid_point=True, min_area_frac=0)
    components = find_components(amap, config)
    points, boxes = prompts_for(components, amap.shape, config)
    assert points.shape == (2, 2, 2) and boxes.shape == (2, 4)
    np.testing.assert_allclose(boxes[0], [19.0, 19.5, 41.0, 30.5])  # grown 5% per side
    np.testing.assert_allclose(boxes[1], [59.0, 0.0, 80.0, 10.5])  # clipped at the borders
    assert tuple(points[0, 0]) == components[0].peak
