"""A smart-tool click inside a held-out defect gives that defect (issue 15, item 1).

The whole interactive path but HTTP: a Label Studio context in percent → ``read_context`` →
pixels → ``Pipeline.segment`` on micro-SAM, over the 40 held-out images of
``tests/miniature/test_micro_sam.py`` (83 defects). Bars are set from measurement with a margin;
the same clicks in a wrong coordinate frame must fall under them, so the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

import clipsam
from clipsam.data.world import HELDOUT_CATEGORIES, WORLD_DEFECT_TYPES
from labelstudio.interactive import interactive_config, read_context
from training.miniature import sam as micro_sam

pytestmark = pytest.mark.slow

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Defect"/></KeyPointLabels>
  <RectangleLabels name="drag" toName="image" smart="true"><Label value="Defect"/></RectangleLabels>
  <BrushLabels name="brush" toName="image"><Label value="Defect"/></BrushLabels>
</View>"""

#: Mean IoU with the clicked defect, one click at its most interior pixel: measured 0.22
#: (x/y swapped 0.02, percent read as pixels 0.002).
CLICK_BAR = 0.15
#: The same for a box around the defect (grown 5 %): measured 0.32 (swapped 0.035, percent
#: read as pixels 0.000).
BOX_BAR = 0.25


@pytest.fixture(scope="module")
def pipeline():
    return clipsam.load_pipeline("tiny", weights="pretrained")


@pytest.fixture(scope="module")
def samples():
    return micro_sam.eval_samples(40, 0, HELDOUT_CATEGORIES, WORLD_DEFECT_TYPES)


def mean_iou(pipeline, samples, kind: str, frame: str = "right") -> float:
    """Mean IoU over every defect of one click (or box) sent as Label Studio sends it.

    ``frame``: ``right``; ``swap`` (x and y exchanged); ``pixels`` (percent read as pixels).
    """
    target = interactive_config(CONFIG)
    scores = []
    for sample in samples:
        height, width = sample.image.shape[:2]
        for defect in sample.defects:
            if kind == "click":
                x, y = micro_sam.interior_point(defect)
                value = {"x": 100 * (x + 0.5) / width, "y": 100 * (y + 0.5) / height,
                         "keypointlabels": ["Defect"]}  # fmt: skip
                item = {"type": "keypointlabels", "from_name": "click", "is_positive": True}
            else:
                x0, y0, x1, y1 = micro_sam.grown_box(defect)
                value = {"x": 100 * x0 / width, "y": 100 * y0 / height,
                         "width": 100 * (x1 - x0) / width, "height": 100 * (y1 - y0) / height,
                         "rectanglelabels": ["Defect"]}  # fmt: skip
                item = {"type": "rectanglelabels", "from_name": "drag"}
            if frame == "swap":
                value["x"], value["y"] = value["y"], value["x"]
                if kind == "box":
                    value["width"], value["height"] = value["height"], value["width"]
            item.update(value=value, original_width=width, original_height=height)
            prompts = read_context({"result": [item]}, target)
            size = (100, 100) if frame == "pixels" else (width, height)
            segment = pipeline.segment(sample.image, *prompts.in_pixels(*size))
            scores.append(micro_sam.iou(segment.mask, defect))
    assert len(scores) > 50
    return float(np.mean(scores))


def test_a_click_or_a_box_on_a_defect_gives_that_defect(pipeline, samples):
    assert mean_iou(pipeline, samples, "click") >= CLICK_BAR
    assert mean_iou(pipeline, samples, "box") >= BOX_BAR


@pytest.mark.parametrize("frame", ["swap", "pixels"])
def test_the_same_prompts_in_a_wrong_frame_miss_the_bar(pipeline, samples, frame):
    assert mean_iou(pipeline, samples, "click", frame) < CLICK_BAR
    assert mean_iou(pipeline, samples, "box", frame) < BOX_BAR
