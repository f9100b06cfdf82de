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
