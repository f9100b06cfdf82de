"""Turning a /predict request into one Label Studio prediction per task, in order.

Images are fetched concurrently; the pipeline then sees them in batches, one call per category
(the category goes into the text prompts). A task whose image fails gets an empty result and a
logged reason; the others still get predictions.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.metrics import PREDICTED_TASKS
from backend.model import ModelService, model_version
from backend.settings import Settings
from labelstudio.controls import to_results
from labelstudio.errors import FetchError
from labelstudio.fetch import ImageFetcher
from labelstudio.label_config import LabelSpec

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    index: int
    task_id: Any
    category: str | None
    image: np.ndarray | None = None
    error: str = ""


class TaskPredictor:
    def __init__(self, settings: Settings, model: ModelService, fetcher: ImageFetcher) -> None:
        self.settings = settings
        self.model = model
        self.fetcher = fetcher
        self._pipeline_lock = threading.Lock()  # CPU-bound: one batch at a time per process
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, settings.threads), thread_name_prefix="fetch"
        )

    def predict(self, tasks: list[dict[str, Any]], spec: LabelSpec) -> list[dict[str, Any]]:
        pipeline = self.model.wait(self.settings.model_wait_seconds)
        jobs = [self._job(i, task, spec) for i, task in enumerate(tasks)]
        list(self._pool.map(self._fetch, [(job, tasks[job.index], spec) for job in jobs]))
        results: list[dict[str, Any]] = [{} for _ in tasks]
        by_category: dict[str | None, list[_Job]] = {}
        for job in jobs:
            if job.image is None:
                logger.warning("task %s: no prediction: %s", job.task_id, job.error)
                results[job.index] = self._empty(pipeline.head.version)
                PREDICTED_TASKS.labels("failed").inc()
            else:
                by_category.setdefault(job.category, []).append(job)
        for category, group in by_category.items():
            with self._pipeline_lock:
                predictions = pipeline.predict([job.image for job in group], category)
            PREDICTED_TASKS.labels("ok").inc(len(group))
            for job, prediction in zip(group, predictions, strict=True):
                results[job.index] = {
                    "result": to_results(prediction, spec, self.settings.verdict_threshold),
                    "score": round(float(prediction.score), 4),
                    "model_version": model_version(self.settings.preset, prediction.head_version),
                }
                logger.info(
                    "task %s: %d region(s), score %.3f, category %r",
                    job.task_id, len(prediction.regions), prediction.score, category,
                )  # fmt: skip
        return results

    def _job(self, index: int, task: dict[str, Any], spec: LabelSpec) -> _Job:
        data = task.get("data") if isinstance(task, dict) else None
        data = data if isinstance(data, dict) else {}
        category = data.get(self.settings.category_key) or self.settings.default_category
        return _Job(index, task.get("id") if isinstance(task, dict) else None, category)

    def _fetch(self, item: tuple[_Job, Any, LabelSpec]) -> None:
        job, task, spec = item
        data = task.get("data") if isinstance(task, dict) else None
        reference = data.get(spec.data_key) if isinstance(data, dict) else None
        if not isinstance(reference, str) or not reference:
            job.error = f"task data has no image under {spec.data_key!r}"
            return
        try:
            task_id = job.task_id if isinstance(job.task_id, int) else None
            job.image = self.fetcher.fetch(reference, task_id=task_id)
        except FetchError as exc:
            job.error = str(exc)

    def _empty(self, head_version: str) -> dict[str, Any]:
        return {
            "result": [],
            "score": 0.0,
            "model_version": model_version(self.settings.preset, head_version),
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False)
