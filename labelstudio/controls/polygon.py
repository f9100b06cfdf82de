"""PolygonLabels: the outer contours of each region, simplified, in percent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from skimage import measure

from labelstudio.controls.common import region_item, region_label
from labelstudio.label_config import ControlSpec

if TYPE_CHECKING:  # annotations only: converting needs no torch
    from clipsam import Prediction

#: Max distance (pixels) between a contour and its simplified polygon.
TOLERANCE = 1.0


def polygon_items(
    prediction: Prediction, control: ControlSpec, _threshold: float
) -> list[dict[str, Any]]:
    height, width = prediction.anomaly_map.shape
    items: list[dict[str, Any]] = []
    for region in prediction.regions:
        label, score = region_label(region, control)
        for contour in _outer_contours(region.mask):
            points = [[100.0 * x / width, 100.0 * y / height] for y, x in contour]
            value = {"points": points, "closed": True, "polygonlabels": [label]}
            index = len(items)
            items.append(region_item(prediction, control, "polygonlabels", index, value, score))
    return items


def _outer_contours(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """Outer contours of each blob (holes skipped), as (row, col) vertices on pixel edges."""
    padded = np.pad(mask, 1).astype(np.float32)
    contours = []
    for contour in measure.find_contours(padded, 0.5):
        if _signed_area(contour) <= 0:  # find_contours winds holes the other way round
            continue
        simplified = measure.approximate_polygon(contour, TOLERANCE)[:-1]  # drop the repeated end
        if len(simplified) >= 3:
            contours.append(np.clip(simplified - 0.5, 0, None))  # undo the pad; pixel edges
    return contours


def _signed_area(contour: npt.NDArray[np.float64]) -> float:
    y, x = contour[:, 0], contour[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))
