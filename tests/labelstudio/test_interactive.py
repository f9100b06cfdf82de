"""Smart-tool configs and contexts → SAM prompts: each control and prompt type, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from labelstudio.interactive import (
    ContextError,
    find_context,
    interactive_config,
    read_context,
)
from labelstudio.label_config import LabelConfigError

SMART = """
<View>
  <Image name="photo" value="$img"/>
  <KeyPointLabels name="click" toName="photo" smart="true">
    <Label value="Scratch"/><Label value="Crack"/><Label value="Other"/>
  </KeyPointLabels>
  <RectangleLabels name="drag" toName="photo" smart="true">
    <Label value="Scratch"/><Label value="Crack"/>
  </RectangleLabels>
  <PolygonLabels name="poly" toName="photo"><Label value="Crack"/></PolygonLabels>
  <BrushLabels name="mask" toName="photo"><Label value="Scratch"/><Label value="Crack"/></BrushLabels>
</View>"""

SMART_LABEL_ONLY = """
<View>
  <Image name="photo" value="$img"/>
  <KeyPointLabels name="click" toName="photo">
    <Label value="Crack" smart="true"/><Label value="Pin"/>
  </KeyPointLabels>
  <PolygonLabels name="poly" toName="photo"><Label value="Crack"/></PolygonLabels>
</View>"""

SIZE = {"original_width": 200, "original_height": 100}


def keypoint(x, y, label="Scratch", positive=True, from_name="click", **extra):
    item = {"from_name": from_name, "to_name": "photo", "type": "keypointlabels", **SIZE,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
            "is_positive": positive}  # fmt: skip
    return {**item, **extra}


def rectangle(x, y, w, h, label="Scratch", rotation=0):
    return {"from_name": "drag", "to_name": "photo", "type": "rectanglelabels", **SIZE,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                      "rectanglelabels": [label]}}  # fmt: skip


def prompts_for(*items, config=SMART):
    return read_context({"result": list(items)}, interactive_config(config))


def test_the_config_names_its_smart_tools_and_prefers_brush_for_the_mask():
    target = interactive_config(SMART)
    assert dict(target.tools).keys() == {"click", "drag"}
    assert (target.output.kind, target.output.from_name, target.output.to_name) == (
        "BrushLabels", "mask", "photo")  # fmt: skip
    assert target.data_key == "img" and target.labels == ("Scratch", "Crack")
    assert target.output.label == "Scratch"  # the fallback: the first label
    assert interactive_config(SMART, "Crack").output.label == "Crack"  # CLIPSAM_DEFECT_LABEL


def test_smart_on_a_label_makes_that_label_smart_and_polygons_take_the_mask():
    target = interactive_config(SMART_LABEL_ONLY)
    assert target.output.kind == "PolygonLabels"
    assert prompts_for(keypoint(10, 20, "Crack"), config=SMART_LABEL_ONLY).label == "Crack"
    with pytest.raises(ContextError, match="not a smart keypointlabels"):
        prompts_for(keypoint(10, 20, "Pin"), config=SMART_LABEL_ONLY)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (SMART.replace(' smart="true"', ""), "no smart tool"),
        (SMART.replace("BrushLabels", "Choices").replace("PolygonLabels", "Choices"),
         "no BrushLabels or PolygonLabels"),
        ("<View><Image", "not valid XML"),
    ],
)  # fmt: skip
def test_configs_that_cannot_take_interactive_masks_are_refused(config, message):
    with pytest.raises(LabelConfigError, match=message):
        interactive_config(config)


def test_a_positive_click_becomes_one_positive_point_in_pixels():
    prompts = prompts_for(keypoint(25.0, 50.0))
    assert prompts.label == "Scratch" and prompts.frame == (200, 100) and prompts.box is None
    points, labels, box = prompts.in_pixels(200, 100)
    np.testing.assert_allclose(points, [[50.0, 50.0]])
    np.testing.assert_array_equal(labels, [1])
    assert box is None


def test_negative_clicks_keep_their_sign_in_order():
    prompts = prompts_for(keypoint(10, 10), keypoint(90, 80, positive=False),
                          keypoint(40, 60, positive=0))  # fmt: skip
    points, labels, _ = prompts.in_pixels(200, 100)
    np.testing.assert_allclose(points, [[20, 10], [180, 80], [80, 60]])
    np.testing.assert_array_equal(labels, [1, 0, 0])
    assert prompts.negatives == 2


def test_a_box_becomes_xyxy_pixels():
    points, labels, box = prompts_for(rectangle(10, 20, 30, 40, label="Crack")).in_pixels(200, 100)
    assert points is None and labels is None
    np.testing.assert_allclose(box, [20, 20, 80, 60])


def test_a_rotated_box_gives_its_axis_aligned_bounds():
    """Label Studio rotates a rectangle about its top-left corner (degrees, clockwise)."""
    _, _, box = prompts_for(rectangle(50, 10, 10, 20, rotation=90)).in_pixels(200, 100)
    np.testing.assert_allclose(box, [80, 10, 100, 30], atol=1e-4)


def test_points_and_a_box_together_and_the_last_label_chosen_wins():
    prompts = prompts_for(rectangle(10, 20, 30, 40), keypoint(25, 40, label="Crack"),
                          keypoint(35, 45, label="Crack", positive=False))  # fmt: skip
    points, labels, box = prompts.in_pixels(400, 200)
    np.testing.assert_allclose(points, [[100, 80], [140, 90]])
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_allclose(box, [40, 40, 160, 120])
    assert prompts.label == "Crack"


def test_percent_scales_to_the_image_fetched_not_the_frame_reported():
    points, _, _ = prompts_for(keypoint(50, 50)).in_pixels(64, 32)
    np.testing.assert_allclose(points, [[32, 16]])


def test_the_label_written_is_the_chosen_one_when_the_output_has_it():
    target = interactive_config(SMART)
    assert target.label_for("Crack") == "Crack"
    assert target.label_for("Other") == "Scratch"  # not a brush label: the fallback
    assert target.label_for(None) == "Scratch"


def test_items_of_other_types_ride_along_unread():
    text = {"from_name": "note", "to_name": "photo", "type": "textarea", "value": {"text": ["x"]}}
    assert prompts_for(text, keypoint(10, 10)).points == ((10.0, 10.0),)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ("click", "must be an object"),
        ({}, "non-empty list"),
        ({"result": []}, "non-empty list"),
        ({"result": ["x"]}, r"result\[0\] is not an object"),
        ({"result": [{"type": "textarea", "value": {}}]}, "no smart keypoint or rectangle"),
        ({"result": [keypoint("10", 5)]}, "value.x must be a number"),
        ({"result": [keypoint(10, 105)]}, "not a percentage"),
        ({"result": [keypoint(float("nan"), 5)]}, "must be a number"),
        ({"result": [keypoint(10, 5, positive="yes")]}, "is_positive"),
        ({"result": [keypoint(10, 5, positive=False)]}, "only negative points"),
        ({"result": [keypoint(10, 5, from_name="elsewhere")]}, "not a smart keypointlabels"),
        ({"result": [{**keypoint(10, 5), "value": None}]}, "no value object"),
        ({"result": [rectangle(10, 5, 0, 20)]}, "box is empty"),
        ({"result": [keypoint(10, 5, original_width=-3)]}, "positive integers"),
    ],
)
def test_malformed_contexts_are_refused_with_the_reason(context, message):
    with pytest.raises(ContextError, match=message):
        read_context(context, interactive_config(SMART))


def test_the_context_is_found_in_params_or_at_the_top_level():
    context = {"result": [keypoint(1, 2)]}
    assert find_context({"context": context}, {}) is context
    assert find_context(None, {"context": context}) is context
    assert find_context({"login": None, "password": None, "context": None}, {}) is None
    assert find_context(None, None) is None
