"""ClipSAM: zero-shot defect segmentation (CLIP + UMCI head, refined by SAM through MMR).

``clipsam.load_pipeline(preset)`` is the entry point; heavy modules load on first use so that
``clipsam.data`` and ``clipsam.metrics`` stay cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Pipeline", "PipelineConfig", "Prediction", "Region", "WeightPaths", "load_pipeline"]

_LAZY = {
    "Pipeline": "clipsam.pipeline",
    "Prediction": "clipsam.pipeline",
    "Region": "clipsam.pipeline",
    "load_pipeline": "clipsam.pipeline",
    "PipelineConfig": "clipsam.config",
    "WeightPaths": "clipsam.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipsam' has no attribute {name!r}")
