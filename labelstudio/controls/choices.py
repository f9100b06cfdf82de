"""Choices: the per-image verdict from the image score, or the image's defect type(s)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelstudio.controls.common import region_label
from labelstudio.label_config import ControlSpec

if TYPE_CHECKING:  # annotations only: converting needs no torch
    from clipsam import Prediction


def choice_items(
    prediction: Prediction, control: ControlSpec, threshold: float
) -> list[dict[str, Any]]:
    if control.types:
        return _type_items(prediction, control, threshold)
    choice = control.defective if prediction.score >= threshold else control.good
    if not choice:
        return []
    return [_item(control, [choice], prediction.score)]


def _type_items(
    prediction: Prediction, control: ControlSpec, threshold: float
) -> list[dict[str, Any]]:
    """The type of the most anomalous region (every region's type, for ``choice="multiple"``),
    scored by its probability; the good choice, if any, for a good image without regions."""
    if prediction.score < threshold or not prediction.regions:
        return [_item(control, [control.good], 1.0 - prediction.score)] if control.good else []
    regions = sorted(prediction.regions, key=lambda r: r.score, reverse=True)
    typed = [region_label(region, control) for region in regions]
    typed = [(label, probability) for label, probability in typed if label]
    if not typed:  # the regions were not typed (no pipeline typing ran)
        return []
    if not control.multiple:
        label, probability = typed[0]
        return [_item(control, [label], probability)]
    best: dict[str, float] = {}
    for label, probability in typed:
        best[label] = max(best.get(label, 0.0), probability)
    return [_item(control, list(best), min(best.values()))]


def _item(control: ControlSpec, choices: list[str], score: float) -> dict[str, Any]:
    return {
        "id": f"{control.from_name}-0",
        "from_name": control.from_name,
        "to_name": control.to_name,
        "type": "choices",
        "value": {"choices": choices},
        "score": round(float(score), 4),
    }
