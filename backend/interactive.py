"""/predict with a smart-tool context: one click or box → one SAM mask for the one task.

The prompts decode against the SAM embedding the feature cache keeps per image, so a click on a
pre-annotated image costs one mask-decoder call; the first click on another image embeds it
once. Runs in a prediction thread behind the same admission gate as every /predict. Only the
first click on an image (the encoder) takes the pipeline lock, in turn with pre-annotation
batches; a click on a cached image decodes at once, even while a batch runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from fastapi import HTTPException

from backend.model import ModelNotReady, ModelService
from backend.settings import Settings
from clipsam.images import ImageError
from clipsam.pipeline import SamUnavailable
from labelstudio.errors import FetchError
from labelstudio.fetch import ImageFetcher
from labelstudio.interactive import ContextError, interactive_config, read_context
from labelstudio.interactive_result import mask_prediction
from labelstudio.label_config import LabelConfigError
from labelstudio.predictions import model_version

logger = logging.getLogger(__name__)


class InteractivePredictor:
    def __init__(
        self,
        settings: Settings,
        model: ModelService,
        fetcher: ImageFetcher,
        lock: contextlib.AbstractContextManager[Any],
    ) -> None:
        self.settings = settings
        self.model = model
        self.fetcher = fetcher
        self.lock = lock  # the pipeline's: clicks and pre-annotation batches take turns

    def predict(self, tasks: list[dict[str, Any]], context: Any, config: str) -> dict[str, Any]:
        """``{"results": [one prediction]}``; HTTPException 422/503 says what is wrong."""
        started = time.perf_counter()
        if isinstance(context, dict) and logger.isEnabledFor(logging.DEBUG):
            shown = {k: v for k, v in context.items() if not k.startswith("project_credentials")}
            logger.debug("interactive context: %s", json.dumps(shown, default=str))
        try:
            target = interactive_config(config, self.settings.defect_label)
            prompts = read_context(context, target)
        except (LabelConfigError, ContextError) as exc:
            raise HTTPException(422, f"interactive: {exc}") from exc
        if len(tasks) != 1:
            raise HTTPException(422, f"interactive: one task per request, got {len(tasks)}")
        task = tasks[0]
        try:
            pipeline = self.model.wait(self.settings.model_wait_seconds)
        except ModelNotReady as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "10"}) from exc
        if pipeline.sam is None:
            raise HTTPException(
                503, "interactive masks need SAM, and this backend runs without it (use_sam off)"
            )
        data = task.get("data")
        reference = data.get(target.data_key) if isinstance(data, dict) else None
        if not isinstance(reference, str) or not reference:
            raise HTTPException(422, f"interactive: task has no image under {target.data_key!r}")
        task_id = task.get("id") if isinstance(task.get("id"), int) else None
        try:
            image = self.fetcher.fetch(reference, task_id)
        except (FetchError, ImageError) as exc:
            raise HTTPException(422, f"interactive: task image not loaded: {exc}") from exc
        height, width = image.shape[:2]
        if prompts.frame is not None and prompts.frame != (width, height):
            logger.warning(
                "task %s: Label Studio sized the image %s, it is %dx%d; prompts scaled to it",
                task_id, "x".join(map(str, prompts.frame)), width, height,
            )  # fmt: skip
        points, labels, box = prompts.in_pixels(width, height)
        fetched = time.perf_counter()
        # A cached image only decodes (milliseconds, no shared state): it does not wait behind
        # a pre-annotation batch. Embedding a new image is heavy: it takes its turn.
        turn = contextlib.nullcontext() if pipeline.sam_embedding_cached(image) else self.lock
        try:
            with turn:
                segment = pipeline.segment(image, points, labels, box)
        except SamUnavailable as exc:
            raise HTTPException(503, f"interactive masks need SAM: {exc}") from exc
        label = target.label_for(prompts.label)
        head_version = pipeline.head.version
        version = model_version(self.settings.preset, head_version)
        done = time.perf_counter()
        logger.info(
            "task %s: interactive %d point(s) (%d negative)%s → %s %r, %d px, SAM IoU %.3f; "
            "embedding %s; fetch %.3f s, SAM %.3f s",
            task_id, len(prompts.points), prompts.negatives, " + box" if box is not None else "",
            target.output.kind, label, int(segment.mask.sum()), segment.iou,
            "computed (first click on this image)" if segment.embedded else "cached",
            fetched - started, done - fetched,
        )  # fmt: skip
        return {"results": [mask_prediction(segment.mask, segment.iou, target, label, version)]}
