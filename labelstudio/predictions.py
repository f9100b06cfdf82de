"""ClipSAM predictions as Label Studio wants them: the one path /predict and pre-labelling share.

Callers say, per task, how to get its image (or why there is none) and its category;
:func:`predict_images` loads the images concurrently, runs the pipeline once per category (the
category goes into the text prompts) and turns each prediction into Label Studio's
``{"result", "score", "model_version"}`` with the config's controls. A task whose image fails
gets ``None`` and a reason; the others still get predictions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsam.images import ImageError
from labelstudio.controls import to_results
from labelstudio.errors import FetchError
from labelstudio.label_config import LabelSpec

if TYPE_CHECKING:  # torch and the backbones load when there is work, not for --help
    from clipsam import Pipeline, Prediction


def model_version(preset: str, head_version: str) -> str:
    """What Label Studio sees: a new head gives a new string, so tasks get re-predicted."""
    return f"clipsam-{preset}-{head_version}"


def verdict_confidence(score: float, threshold: float) -> float:
    """How sure the verdict is, in [0, 1]: 0 on the threshold, 1 at either end of the scale.

    This is the prediction's ``score``, so that sorting Label Studio's task list by prediction
    score, ascending, puts first the images whose verdict is closest to flipping: the ones whose
    annotation teaches the head the most (uncertainty sampling). The anomaly score itself stays
    on the verdict (``Choices``) item and on each region.
    """
    threshold = min(max(float(threshold), 0.0), 1.0)
    score = min(max(float(score), 0.0), 1.0)
    room = threshold if score < threshold else 1.0 - threshold
    return 1.0 if room <= 0.0 else min(1.0, abs(score - threshold) / room)


def to_prediction(
    prediction: Prediction, spec: LabelSpec, verdict_threshold: float, preset: str
) -> dict[str, Any]:
    """One Label Studio prediction: every control's items, how sure the verdict is (the score
    Label Studio sorts by, :func:`verdict_confidence`), the model version."""
    return {
        "result": to_results(prediction, spec, verdict_threshold),
        "score": round(verdict_confidence(prediction.score, verdict_threshold), 4),
        "model_version": model_version(preset, prediction.head_version),
    }


@dataclass
class ImageTask:
    """One image to predict: how to load it (None: there is nothing to load), its category.

    ``error`` says why there is no image (set by the caller, or by a failed ``load``).
    """

    category: str | None
    load: Callable[[], npt.NDArray[np.uint8]] | None = None
    error: str = ""
    image: npt.NDArray[np.uint8] | None = None


#: One task's outcome: the pipeline's prediction and Label Studio's, or None (see ``error``).
Predicted = tuple["Prediction", dict[str, Any]] | None


def predict_images(
    pipeline: Pipeline,
    tasks: Sequence[ImageTask],
    spec: LabelSpec,
    verdict_threshold: float,
    preset: str,
    pool: Executor,
    lock: contextlib.AbstractContextManager[Any] | None = None,
) -> list[Predicted]:
    """Load every image in ``pool`` (one already loaded is kept), predict per category (under
    ``lock``), in task order."""
    list(pool.map(load_task, tasks))
    outcomes: list[Predicted] = [None] * len(tasks)
    groups: dict[str | None, list[int]] = {}
    for index, task in enumerate(tasks):
        if task.image is not None:
            groups.setdefault(task.category, []).append(index)
    for category, indices in groups.items():
        images = [tasks[i].image for i in indices]
        with lock or contextlib.nullcontext():
            predictions = pipeline.predict(images, category)
            if spec.types:  # several defect labels: each region gets its most likely one
                pipeline.type_regions(images, predictions, spec.types, category)
        for index, prediction in zip(indices, predictions, strict=True):
            outcomes[index] = (
                prediction,
                to_prediction(prediction, spec, verdict_threshold, preset),
            )
    return outcomes


def load_task(task: ImageTask) -> None:
    """Fill ``task.image``, or ``task.error`` if it cannot be had; once (a loaded or failed task
    is left as it is, so images loaded ahead of time are not fetched twice)."""
    if task.image is not None or task.error:
        return
    if task.load is None:
        task.error = task.error or "no image reference"
        return
    try:
        task.image = task.load()
    except (FetchError, ImageError) as exc:  # a broken image fails only its own task
        task.error = str(exc)
