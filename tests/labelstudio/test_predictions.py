"""The prediction's score: Label Studio sorts tasks by it, so the least sure verdicts come first."""

from __future__ import annotations

import numpy as np
import pytest

from clipsam import Prediction
from labelstudio.label_config import parse_label_config
from labelstudio.predictions import to_prediction, verdict_confidence

CONFIG = """<View><Image name="i" value="$x"/>
<Choices name="c" toName="i"><Choice value="Good"/><Choice value="Defective"/></Choices></View>"""


@pytest.mark.parametrize(
    ("score", "threshold", "expected"),
    [(0.5, 0.5, 0.0), (1.0, 0.5, 1.0), (0.0, 0.5, 1.0), (0.75, 0.5, 0.5), (0.1, 0.2, 0.5),
     (0.6, 0.2, 0.5), (0.3, 0.0, 0.3), (0.3, 1.0, 0.7), (1.7, 0.5, 1.0), (-1.0, 0.5, 1.0)],
)  # fmt: skip
def test_confidence_is_the_distance_to_the_threshold_scaled_to_each_side(
    score, threshold, expected
):
    assert verdict_confidence(score, threshold) == pytest.approx(expected)


def test_sorting_by_prediction_score_puts_the_verdicts_nearest_the_threshold_first():
    spec = parse_label_config(CONFIG)
    scores = [0.05, 0.97, 0.48, 0.7, 0.31, 0.53]
    blank = np.zeros((4, 4), dtype=np.float32)
    predictions = {
        s: to_prediction(Prediction(blank, blank > 0, [], s), spec, 0.5, "tiny") for s in scores
    }
    ascending = sorted(scores, key=lambda s: predictions[s]["score"])
    assert ascending == [0.48, 0.53, 0.31, 0.7, 0.05, 0.97]
    for s, prediction in predictions.items():  # the anomaly score stays on the verdict
        [verdict] = prediction["result"]
        assert verdict["score"] == pytest.approx(s)
        assert verdict["value"]["choices"] == ["Defective" if s >= 0.5 else "Good"]
