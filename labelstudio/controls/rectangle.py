"""RectangleLabels: each region's bounding box, in percent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelstudio.controls.common import region_item, region_label
from labelstudio.label_config import ControlSpec

if TYPE_CHECKING:  # annotations only: converting needs no torch
    from clipsam import Prediction


def rectangle_items(
    prediction: Prediction, control: ControlSpec, _threshold: float
) -> list[dict[str, Any]]:
    height, width = prediction.anomaly_map.shape
    items = []
    for index, region in enumerate(prediction.regions):
        label, score = region_label(region, control)
        x0, y0, x1, y1 = region.bbox
        value = {
            "x": 100.0 * x0 / width,
            "y": 100.0 * y0 / height,
            "width": 100.0 * (x1 - x0) / width,
            "height": 100.0 * (y1 - y0) / height,
            "rotation": 0,
            "rectanglelabels": [label],
        }
        items.append(region_item(prediction, control, "rectanglelabels", index, value, score))
    return items
