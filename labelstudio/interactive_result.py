"""An interactive mask as the one Label Studio prediction the editor shows as a suggestion.

The mask goes through the same per-control converters as pre-annotations (one RLE brush, or
one polygon per blob), so both paths write identical result items; each item gets a fresh id so
that successive suggestions never collide with regions the annotator already accepted.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt

from labelstudio.controls import CONVERTERS
from labelstudio.interactive import InteractiveConfig


def mask_prediction(
    mask: npt.NDArray[np.bool_], score: float, config: InteractiveConfig, label: str,
    version: str,
) -> dict[str, Any]:  # fmt: skip
    """``{"result", "score", "model_version"}`` for ``mask`` written into the config's output
    control with ``label``; an empty mask gives an empty result."""
    from clipsam.pipeline import Prediction, Region  # the caller has the model loaded

    regions = []
    if mask.any():
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        regions.append(Region(mask=mask, bbox=bbox, score=score))
    prediction = Prediction(
        anomaly_map=mask.astype(np.float32), mask=mask, regions=regions, score=score
    )
    control = dataclasses.replace(config.output, label=label)
    items = CONVERTERS[control.kind](prediction, control, 0.0)
    for item in items:
        item["id"] = uuid.uuid4().hex[:10]
    return {"result": items, "score": round(float(score), 4), "model_version": version}
