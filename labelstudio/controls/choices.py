"""Choices: the per-image verdict, from the image score."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelstudio.label_config import ControlSpec

if TYPE_CHECKING:  # annotations only: converting needs no torch
    from clipsam import Prediction


def choice_items(
    prediction: Prediction, control: ControlSpec, threshold: float
) -> list[dict[str, Any]]:
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
