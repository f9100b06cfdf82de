"""Turning a /predict request into one Label Studio prediction per task, in order.

The path itself is :func:`labelstudio.predictions.predict_images`, shared with pre-labelling:
images are fetched concurrently; the pipeline then sees them in batches, one call per category
(the category goes into the text prompts). A task whose image fails gets an empty result and a
logged reason; the others still get predictions.
"""

from __future__ import annotations

import functools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from backend.metrics import PREDICTED_TASKS
from backend.model import ModelService
from backend.settings import Settings
from labelstudio.fetch import ImageFetcher
from labelstudio.label_config import LabelSpec
from labelstudio.predictions import ImageTask, model_version, predict_images

logger = logging.getLogger(__name__)


class TaskPredictor:
    def __init__(self, settings: Settings, model: ModelService, fetcher: ImageFetcher) -> None:
        self.settings = settings
        self.model = model
        self.fetcher = fetcher
        self._pipeline_lock = threading.Lock()  # CPU-bound: one batch at a time per process
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, settings.threads), thread_name_prefix="fetch"
        )

    @property
    def pipeline_lock(self) -> threading.Lock:
        """Held while the pipeline runs; interactive clicks take it too."""
        return self._pipeline_lock

    def predict(self, tasks: list[dict[str, Any]], spec: LabelSpec) -> list[dict[str, Any]]:
        pipeline = self.model.wait(self.settings.model_wait_seconds)
        images = [self._image(task, spec) for task in tasks]
        outcomes = predict_images(
            pipeline, images, spec, self.settings.verdict_threshold, self.settings.preset,
            self._pool, self._pipeline_lock,
        )  # fmt: skip
        results: list[dict[str, Any]] = []
        for task, image, outcome in zip(tasks, images, outcomes, strict=True):
            task_id = task.get("id") if isinstance(task, dict) else None
            if outcome is None:
                logger.warning("task %s: no prediction: %s", task_id, image.error)
                results.append(self._empty(pipeline.head.version))
                PREDICTED_TASKS.labels("failed").inc()
                continue
            prediction, result = outcome
            PREDICTED_TASKS.labels("ok").inc()
            results.append(result)
            logger.info(
                "task %s: %d region(s), score %.3f, category %r",
                task_id, len(prediction.regions), prediction.score, image.category,
            )  # fmt: skip
        return results

    def _image(self, task: Any, spec: LabelSpec) -> ImageTask:
        """The task's category, and how to fetch its image (or why it has none)."""
        data = task.get("data") if isinstance(task, dict) else None
        data = data if isinstance(data, dict) else {}
        category = data.get(self.settings.category_key) or self.settings.default_category
        reference = data.get(spec.data_key)
        if not isinstance(reference, str) or not reference:
            return ImageTask(category, error=f"task data has no image under {spec.data_key!r}")
        task_id = task.get("id")
        task_id = task_id if isinstance(task_id, int) else None
        return ImageTask(category, functools.partial(self.fetcher.fetch, reference, task_id))

    def _empty(self, head_version: str) -> dict[str, Any]:
        return {
            "result": [],
            "score": 0.0,
            "model_version": model_version(self.settings.preset, head_version),
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False)
