"""Label config parsing and the per-control converters, on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest

from clipsam import Prediction, Region
from labelstudio.controls import to_results
from labelstudio.label_config import LabelConfigError, parse_label_config


def _prediction(mask: np.ndarray, score: float = 0.8) -> Prediction:
    ys, xs = np.nonzero(mask)
    region = Region(mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), 0.7)
    return Prediction(mask.astype(np.float32), mask, [region], score)


@pytest.mark.parametrize(
    ("values", "defective", "good"),
    [
        (["Good", "Defective"], "Defective", "Good"),
        (["OK", "NG"], "NG", "OK"),
        (["normal", "Anomaly"], "Anomaly", "normal"),
        (["No defect", "defect"], "defect", "No defect"),
    ],
)
def test_choices_are_matched_to_the_config_values(values, defective, good):
    choices = "".join(f'<Choice value="{v}"/>' for v in values)
    config = (
        f'<View><Image name="i" value="$x"/><Choices name="c" toName="i">{choices}</Choices></View>'
    )
    [control] = parse_label_config(config).controls
    assert (control.defective, control.good) == (defective, good)


def test_choices_without_a_defect_word_are_left_out():
    config = (
        '<View><Image name="i" value="$x"/><Choices name="c" toName="i"><Choice value="Cat"/>'
        '</Choices><BrushLabels name="b" toName="i"><Label value="Hole"/></BrushLabels></View>'
    )
    spec = parse_label_config(config)
    assert [c.kind for c in spec.controls] == ["BrushLabels"] and spec.data_key == "x"
    assert spec.controls[0].label == "Hole"  # first label by default


def test_controls_on_other_objects_are_ignored():
    config = (
        '<View><Image name="i" value="$x"/><Text name="t" value="$t"/>'
        '<Choices name="c" toName="t"><Choice value="Defective"/></Choices></View>'
    )
    with pytest.raises(LabelConfigError, match="no control"):
        parse_label_config(config)


def test_polygons_skip_holes_and_follow_pixel_edges():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:18, 4:24] = True
    mask[7:12, 9:14] = False  # a hole: no polygon of its own
    config = '<View><Image name="i" value="$x"/><PolygonLabels name="p" toName="i"><Label value="D"/></PolygonLabels></View>'
    [item] = to_results(_prediction(mask), parse_label_config(config), 0.5)
    points = np.asarray(item["value"]["points"]) * [30 / 100, 20 / 100]
    # on the pixels' outer edges, to half a pixel (marching squares cuts the corners)
    assert points[:, 0].min() == pytest.approx(4, abs=0.51)
    assert points[:, 0].max() == pytest.approx(24, abs=0.51)
    assert points[:, 1].min() == pytest.approx(2, abs=0.51)
    assert points[:, 1].max() == pytest.approx(18, abs=0.51)


def test_verdict_follows_the_threshold():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 2:4] = True
    config = '<View><Image name="i" value="$x"/><Choices name="v" toName="i"><Choice value="Good"/><Choice value="Bad"/></Choices></View>'
    spec = parse_label_config(config)
    assert to_results(_prediction(mask, 0.8), spec, 0.5)[0]["value"]["choices"] == ["Bad"]
    assert to_results(_prediction(mask, 0.3), spec, 0.5)[0]["value"]["choices"] == ["Good"]


@pytest.mark.parametrize(
    ("labels", "label", "types"),
    [
        (["Scratch", "Crack", "Stain"], "Scratch", ("Scratch", "Crack", "Stain")),
        (["OK", "Scratch", "Crack"], "Scratch", ("Scratch", "Crack")),  # "good" is not a type
        (["Other", "Defect"], "Defect", ()),  # a catch-all defect label wins
        (["Hole"], "Hole", ()),
    ],
)
def test_several_defect_labels_are_types_to_choose_among(labels, label, types):
    tags = "".join(f'<Label value="{v}"/>' for v in labels)
    config = f'<View><Image name="i" value="$x"/><BrushLabels name="b" toName="i">{tags}</BrushLabels></View>'
    [control] = parse_label_config(config).controls
    assert (control.label, control.types) == (label, types)


def test_a_choices_control_of_types_gets_the_type_of_the_most_anomalous_region():
    config = (
        '<View><Image name="i" value="$x"/><Choices name="c" toName="i" choice="multiple">'
        '<Choice value="Good"/><Choice value="Scratch"/><Choice value="Spot"/></Choices></View>'
    )
    [control] = parse_label_config(config).controls
    assert (control.types, control.good, control.multiple) == (("Scratch", "Spot"), "Good", True)
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:3, 1:3] = True
    prediction = _prediction(mask, score=0.9)
    prediction.regions[0].label_probs = {"Scratch": 0.2, "Spot": 0.8}
    second = Region(mask, (1, 1, 3, 3), 0.95, "Scratch", {"Scratch": 0.6, "Spot": 0.4})
    prediction.regions.append(second)
    spec = parse_label_config(config)
    [item] = to_results(prediction, spec, 0.5)
    assert item["value"]["choices"] == ["Scratch", "Spot"]  # most anomalous region first
    single = spec.controls[0].__class__(**{**vars(spec.controls[0]), "multiple": False})
    [item] = to_results(prediction, spec.__class__(spec.image_name, spec.data_key, (single,)), 0.5)
    assert item["value"]["choices"] == ["Scratch"] and item["score"] == pytest.approx(0.6)
    prediction.score = 0.2  # a good verdict: the good choice
    [item] = to_results(prediction, spec, 0.5)
    assert item["value"]["choices"] == ["Good"]


@pytest.mark.parametrize(
    "rectangle",
    [
        '<RectangleLabels name="r" toName="i" smart="true"><Label value="Defect"/></RectangleLabels>',
        '<RectangleLabels name="r" toName="i" smartOnly="true"><Label value="Defect"/></RectangleLabels>',
        '<RectangleLabels name="r" toName="i"><Label value="Defect" smart="true"/></RectangleLabels>',
    ],
)
def test_smart_tools_are_left_to_the_annotator(rectangle):
    config = (
        f'<View><Image name="i" value="$x"/>{rectangle}'
        '<BrushLabels name="b" toName="i"><Label value="Defect"/></BrushLabels></View>'
    )
    assert [c.from_name for c in parse_label_config(config).controls] == ["b"]
    plain = config.replace(' smart="true"', "").replace(' smartOnly="true"', "")
    assert [c.from_name for c in parse_label_config(plain).controls] == ["r", "b"]
