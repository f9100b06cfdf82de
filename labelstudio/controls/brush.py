"""BrushLabels: one RLE brush item per region (label-studio-sdk's format, encoded vectorised)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from labelstudio.brush_rle import mask_to_rle
from labelstudio.controls.common import region_item, region_label
from labelstudio.label_config import ControlSpec

if TYPE_CHECKING:  # annotations only: converting needs no torch
    from clipsam import Prediction


def brush_items(
    prediction: Prediction, control: ControlSpec, _threshold: float
) -> list[dict[str, Any]]:
    items = []
    for index, region in enumerate(prediction.regions):
        label, score = region_label(region, control)
        rle = mask_to_rle(region.mask.astype(np.uint8) * 255)
        value = {"format": "rle", "rle": rle, "brushlabels": [label]}
        items.append(region_item(prediction, control, "brushlabels", index, value, score))
    return items
