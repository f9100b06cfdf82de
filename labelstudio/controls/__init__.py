"""One small converter per Label Studio control: a ClipSAM prediction → result items.

Coordinates are percent of the original image size; ``original_width``/``original_height`` are
the pixel size after EXIF transpose, which is what the pipeline saw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from labelstudio.controls.brush import brush_items
from labelstudio.controls.choices import choice_items
from labelstudio.controls.polygon import polygon_items
from labelstudio.controls.rectangle import rectangle_items
from labelstudio.label_config import ControlSpec, LabelSpec

if TYPE_CHECKING:  # annotations only: converting needs no torch
    from clipsam import Prediction

Converter = Callable[["Prediction", ControlSpec, float], list[dict[str, Any]]]

CONVERTERS: dict[str, Converter] = {
    "BrushLabels": brush_items,
    "PolygonLabels": polygon_items,
    "RectangleLabels": rectangle_items,
    "Choices": choice_items,
}


def to_results(
    prediction: Prediction, spec: LabelSpec, verdict_threshold: float
) -> list[dict[str, Any]]:
    """Every control's items for one image, in config order."""
    items: list[dict[str, Any]] = []
    for control in spec.controls:
        items += CONVERTERS[control.kind](prediction, control, verdict_threshold)
    return items
