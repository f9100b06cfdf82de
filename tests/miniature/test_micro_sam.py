"""micro-SAM does what SAM does, on categories it never saw: a prompt gives the mask it points
at (issue 11). Each bar is set from measurement with a margin (docs/miniature.md), and the
breaks below must fall under the same bar, so these tests can fail."""

from __future__ import annotations

import numpy as np
import pytest

from clipsam.data.world import HELDOUT_CATEGORIES, WORLD_DEFECT_TYPES
from clipsam.refine import find_components, prompts_for
from clipsam.weights import MICRO_SAM_WEIGHTS
from training.miniature import sam as micro_sam

pytestmark = pytest.mark.slow

#: Mean IoU with the held-out defect a box prompt (grown 5%, as MMR builds it) must reach:
#: measured 0.32 on these 40 images (point 0.22; random weights 0.01; the box itself, filled
#: in, 0.41: the shipped micro-SAM is short of a real SAM, see docs/miniature.md).
BOX_BAR = 0.25
#: The same for a single point (the defect's most interior pixel, best of three masks).
POINT_BAR = 0.15


@pytest.fixture(scope="module")
def samples():
    return micro_sam.eval_samples(40, 0, HELDOUT_CATEGORIES, WORLD_DEFECT_TYPES)


@pytest.fixture(scope="module")
def shipped():
    return micro_sam.load_backbone(MICRO_SAM_WEIGHTS)


def test_a_prompt_gives_the_defect_it_points_at(shipped, samples):
    scores = micro_sam.evaluate(shipped, samples)
    assert scores["box"] >= BOX_BAR and scores["point_box"] >= BOX_BAR
    assert scores["point"] >= POINT_BAR


def test_prompts_in_the_wrong_coordinate_frame_fall_below_that_bar(shipped, samples):
    """Break: (y, x) handed over as (x, y). Measured 0.02-0.04."""
    scores = micro_sam.evaluate(shipped, samples, swap_xy=True)
    assert max(scores["box"], scores["point_box"]) < BOX_BAR and scores["point"] < POINT_BAR


def test_random_weights_fall_below_that_bar(samples):
    scores = micro_sam.evaluate(micro_sam.load_backbone(None), samples)
    assert max(scores["box"], scores["point_box"]) < BOX_BAR and scores["point"] < POINT_BAR


def _prompt_geometry(micro, heldout, swap: bool = False) -> tuple[float, float]:
    """Over the held-out coarse maps' components: the share of point prompts inside their
    component, and of box prompts that contain it."""
    inside = contains = total = 0
    for image in heldout:
        amap = micro.predict([image.image], image.category)[0].anomaly_map
        components = find_components(amap, micro.config.mmr)
        if not components:
            continue
        points, boxes = prompts_for(components, amap.shape, micro.config.mmr)
        if swap:
            points, boxes = points[..., ::-1], boxes[:, [1, 0, 3, 2]]
        for component, point, box in zip(components, points, boxes, strict=True):
            x, y = (int(v) for v in point[0])
            h, w = component.mask.shape
            inside += bool(0 <= y < h and 0 <= x < w and component.mask[y, x])
            ys, xs = np.nonzero(component.mask)
            contains += bool(
                box[0] <= xs.min() and box[1] <= ys.min() and box[2] >= xs.max() + 1
                and box[3] >= ys.max() + 1
            )  # fmt: skip
            total += 1
    assert total > 0
    return inside / total, contains / total


def test_mmr_prompts_fall_inside_their_component(micro, heldout):
    """MMR's prompts, built from the coarse map of the shipped micro-CLIP: every point sits in
    its component and every box holds it."""
    assert _prompt_geometry(micro, heldout) == (1.0, 1.0)


def test_prompts_in_the_wrong_frame_leave_their_component(micro, heldout):
    """Break: the same prompts with x and y swapped; most leave their component."""
    inside, contains = _prompt_geometry(micro, heldout, swap=True)
    assert inside < 0.5 and contains < 0.5
