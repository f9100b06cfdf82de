"""Fields every region item shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelstudio.label_config import ControlSpec

if TYPE_CHECKING:  # annotations only: converting needs no torch
    from clipsam import Prediction, Region


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


def region_label(region: Region, control: ControlSpec) -> tuple[str, float]:
    """The label a region gets in ``control``, and the item's score.

    With several defect types, its most likely type among the control's labels and that
    probability (renormalised over them); otherwise the control's defect label and the region's
    anomaly score.
    """
    if control.types and region.label_probs:
        probs = {t: region.label_probs.get(t, 0.0) for t in control.types}
        total = sum(probs.values())
        if total > 0:
            best = max(control.types, key=lambda t: probs[t])  # ties: config order
            return best, probs[best] / total
    return control.label, region.score
