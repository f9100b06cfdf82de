"""Pipelines loaded once per process and shared by every job that asks for the same one.

An rq worker keeps its model warm between jobs (retraining and pre-labelling alike), and a
backend lends the pipeline it already serves to its in-process retraining worker
(:func:`share_pipeline`), so frozen CLIP and SAM and their feature caches load once. Pipelines
are told apart by preset and config overrides.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and the backbones load when there is work, not on import
    from clipsam.pipeline import Pipeline
    from clipsam.weights import WeightPaths

_PIPELINES: dict[str, Pipeline] = {}
_LOCK = threading.Lock()


def pipeline_key(preset: str, overrides: dict[str, Any]) -> str:
    """One string per (preset, overrides), whatever the order of the overrides."""
    return json.dumps([preset, overrides], sort_keys=True, default=str)


def shared_pipeline(
    preset: str, overrides: dict[str, Any], weight_paths: WeightPaths | None = None
) -> Pipeline:
    """This process's pipeline for ``preset`` and ``overrides``, loaded on first use."""
    from clipsam.pipeline import load_pipeline

    key = pipeline_key(preset, overrides)
    with _LOCK:  # two threads asking at once load it once
        if key not in _PIPELINES:
            _PIPELINES[key] = load_pipeline(preset, weight_paths=weight_paths, **overrides)
        return _PIPELINES[key]


def share_pipeline(preset: str, overrides: dict[str, Any], pipeline: Pipeline) -> None:
    """Let jobs in this process reuse an already loaded pipeline (frozen CLIP, warm caches)."""
    with _LOCK:
        _PIPELINES[pipeline_key(preset, overrides)] = pipeline
