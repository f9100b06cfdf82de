"""Fields every region item shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelstudio.label_config import ControlSpec

if TYPE_CHECKING:  # annotations only: converting needs no torch
    from clipsam import Prediction


def region_item(
    prediction: Prediction, control: ControlSpec, kind: str, index: int, value: dict[str, Any],
    score: float,
) -> dict[str, Any]:  # fmt: skip
    height, width = prediction.anomaly_map.shape
    return {
        "id": f"{control.from_name}-{index}",
        "from_name": control.from_name,
        "to_name": control.to_name,
        "type": kind,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
        "score": round(float(score), 4),
    }
