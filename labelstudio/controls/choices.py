"""Choices: the per-image verdict, from the image score."""

from __future__ import annotations

from clipsam import Prediction
from labelstudio.label_config import ControlSpec


def choice_items(prediction: Prediction, control: ControlSpec, threshold: float) -> list[dict]:
    choice = control.defective if prediction.score >= threshold else control.good
    if not choice:
        return []
    return [
        {
            "id": f"{control.from_name}-0",
            "from_name": control.from_name,
            "to_name": control.to_name,
            "type": "choices",
            "value": {"choices": [choice]},
            "score": round(float(prediction.score), 4),
        }
    ]
