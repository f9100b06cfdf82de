"""The retraining job: corrections from Redis → a new head → promoted only if not worse.

Runs on an rq worker (``python -m training.worker``, or the backend's in-process worker). The
serving head is never touched until the candidate has been written and judged, so a crashed or
killed job leaves serving exactly as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rq import get_current_job

from clipsam import Pipeline
from clipsam.defect_types import TypeClassifier
from clipsam.heads import AnomalyHead, load_head
from clipsam.images import load_image
from clipsam.pipeline_cache import shared_pipeline
from correction_loop import keys
from correction_loop.corrections import Correction
from correction_loop.head_files import HeadVersion, RegistryError
from correction_loop.image_cache import cached_fetch
from correction_loop.redis_conn import connect
from correction_loop.registry import ModelRegistry
from correction_loop.store import CorrectionStore
from labelstudio.fetch import ImageFetcher
from labelstudio.settings import FetchSettings, api_key_from_env
from training.datasets import iter_labeled, load_samples
from training.defect_types import (
    TypeExample,
    fit_types,
    predicted_examples,
    type_accuracy,
    type_examples,
)
from training.head_check import pipeline_shapes
from training.region_metrics import head_region_metrics
from training.trainer import (
    HeldOutMaps,
    Improvement,
    TrainConfig,
    TrainingSample,
    evaluate_maps,
    has_parameters,
    held_out_maps,
    prepare_samples,
    train_head,
)

logger = logging.getLogger(__name__)


#: How often a running job says it is alive, by default (``CLIPSAM_RETRAIN_HEARTBEAT``, read by
#: the backend's settings, which hand it to the scheduler and, through the job, to the worker).
HEARTBEAT_SECONDS = 30.0
#: Early stopping by default (``CLIPSAM_RETRAIN_PATIENCE``): epochs without a higher held-out
#: pixel AUROC before a retrain stops, keeping its best epoch (docs/method.md §13).
PATIENCE = 3
#: Epochs a warm-started retrain takes at most (``CLIPSAM_RETRAIN_WARM_EPOCHS``).
WARM_EPOCHS = 10


@contextlib.contextmanager
def heartbeat(
    connection: redis.Redis, project: str, period: float = HEARTBEAT_SECONDS
) -> Iterator[None]:
    """Keep the project's ``retrain_alive`` key fresh while the job runs, so that a killed
    worker is noticed in seconds.

    rq marks a job started for its whole timeout even when its worker died (SIGKILL, OOM);
    the scheduler uses this key to tell a running job from an abandoned one.
    """
    key, stop = keys.retrain_alive(project), threading.Event()

    def beat() -> None:
        while True:
            try:
                connection.set(key, os.getpid(), px=int(period * 2000))
            except redis.exceptions.RedisError as exc:
                logger.warning("retrain heartbeat not written: %s", exc)
            if stop.wait(period):
                return

    thread = threading.Thread(target=beat, name=f"retrain-heartbeat-{project}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(redis.exceptions.RedisError):
            connection.delete(key)


def _bucket(annotation_id: int) -> int:
    """A stable pseudo-random number in 0..999 per annotation id."""
    return int(hashlib.blake2b(str(annotation_id).encode(), digest_size=4).hexdigest(), 16) % 1000


def is_held_out(annotation_id: int, fraction: float) -> bool:
    """A stable slice of corrections that is never trained on, so promotion is judged fairly."""
    return _bucket(annotation_id) < fraction * 1000


def split_corrections(
    corrections: list[Correction], fraction: float
) -> tuple[list[Correction], list[Correction]]:
    """(train, held out); with ``fraction`` > 0 at least one is held out, so heads can be judged."""
    held = [c for c in corrections if is_held_out(c.annotation_id, fraction)]
    if not held and fraction > 0 and len(corrections) >= 2:
        held = [min(corrections, key=lambda c: _bucket(c.annotation_id))]
    held_ids = {c.annotation_id for c in held}
    return [c for c in corrections if c.annotation_id not in held_ids], held


def retrain_job(
    project: str,
    reason: str,
    model_dir: str,
    preset: str,
    pipeline_overrides: dict[str, Any] | None = None,
    redis_url: str | None = None,
    settings: dict[str, Any] | None = None,
    epochs: int = 10,
    holdout: float = 0.2,
    base_data: list[str] | None = None,
    seed: int = 0,
    min_steps: int | None = None,
    heartbeat_period: float = HEARTBEAT_SECONDS,
    patience: int | None = PATIENCE,
    warm_epochs: int = WARM_EPOCHS,
    promote_early: bool = True,
) -> dict[str, Any]:
    """Train from the serving head on the project's corrections; promote or reject.

    A **warm start** (the serving head is a trained one) trains at most ``warm_epochs``
    epochs, with no floor of steps. A fresh head (the serving head is the training-free one)
    trains ``epochs``, or more on small correction sets, so that it takes at least
    ``min_steps`` optimiser steps (default :data:`MIN_STEPS`).

    ``patience``: stop after that many epochs without a higher pixel AUROC on the held-out
    corrections (``TrainConfig.stop_on``) and keep the best epoch (``TrainConfig.patience``; a
    fresh head is never stopped before its ``min_steps``); None trains every epoch.

    ``promote_early``: the first epoch that beats the serving head on the held-out AUROC and
    passes the gate serves at once, while training goes on (the person who corrected waits one
    epoch, not all of them); the best epoch then replaces it if it passes the gate against it.

    ``settings``: how to fetch images (:meth:`FetchSettings.to_job`; this worker's environment
    when None); the Label Studio API key is always this worker's own.

    Redis: the worker's own connection inside an rq job, else ``redis_url`` (or the embedded
    server of ``model_dir``).
    """
    job = get_current_job()
    connection = job.connection if job is not None else connect(redis_url, Path(model_dir))
    with heartbeat(connection, project, heartbeat_period):
        return _retrain(connection, project, reason, model_dir, preset, pipeline_overrides,
                        settings, epochs, holdout, base_data, seed,
                        MIN_STEPS if min_steps is None else min_steps, patience,
                        warm_epochs, promote_early)  # fmt: skip


def _retrain(
    connection: redis.Redis,
    project: str,
    reason: str,
    model_dir: str,
    preset: str,
    pipeline_overrides: dict[str, Any] | None,
    settings: dict[str, Any] | None,
    epochs: int,
    holdout: float,
    base_data: list[str] | None,
    seed: int,
    min_steps: int,
    patience: int | None = None,
    warm_epochs: int = WARM_EPOCHS,
    promote_early: bool = True,
) -> dict[str, Any]:
    started = time.perf_counter()
    overrides = dict(pipeline_overrides or {})
    store = CorrectionStore(connection)
    registry = ModelRegistry(Path(model_dir), connection)
    seen = store.pending(project)
    corrections = [c for c in store.list_project(project) if not c.was_cancelled]
    logger.info("retraining project %s (%s): %d corrections", project, reason, len(corrections))
    pipeline = shared_pipeline(preset, overrides)  # built once per worker, or the backend's
    fetch = FetchSettings.from_job(settings) if settings is not None else FetchSettings.from_env()
    fetcher = ImageFetcher(fetch, api_key_from_env())  # the key: this worker's own
    cache = Path(model_dir) / "images"
    train_items, held_items = split_corrections(corrections, holdout)
    train = _prepare(pipeline, train_items, fetcher, cache)
    held_out = _prepare(pipeline, held_items, fetcher, cache)
    if base_data:
        samples = load_samples(base_data)
        train += prepare_samples(pipeline, iter_labeled(samples), len(samples), progress=False)
    if not train:
        store.reset_pending(project, seen)
        return {"project": project, "status": "skipped", "reason": "no usable corrections"}

    serving = registry.serving()
    current = load_head(serving.path, pipeline.clip.backbone_id) if serving else pipeline.head
    warm = has_parameters(current)  # a trained head serves: start from it
    init = current if warm else pipeline.new_head(seed, kind="umci")
    config = TrainConfig(seed=seed, progress=False, patience=patience)
    if warm:  # no floor of steps: early stopping on the held-out corrections ends it
        config = dataclasses.replace(config, epochs=warm_epochs)
    else:
        floor = epochs_for(len(train), 1, config.batch_size, min_steps)
        config = dataclasses.replace(config, epochs=max(epochs, floor), min_epochs=floor)
    extra = {"project": project, "reason": reason, "train": len(train), "held_out": len(held_out)}
    gate = _Gate(pipeline, registry, held_out, current,
                 serving.version if serving else current.version, extra, started)  # fmt: skip
    early = gate.offer_early if promote_early and held_out else None
    if held_out and not warm:  # the training-free head: not what training starts from
        gate.serving_metrics = judge_head(pipeline, current, held_out)
    result = train_head(pipeline, train, held_out, config, init_head=init, on_improved=early)
    metrics = dict(result.metrics)
    if held_out:  # both heads on the same held-out corrections (maps from the training's checks)
        metrics = judge_head(pipeline, result.head, held_out, result.held_out_maps)
        if gate.serving_metrics is None:
            gate.serving_metrics = judge_head(pipeline, current, held_out, result.start_maps)
    serving_metrics = gate.first_serving_metrics or gate.serving_metrics
    learned = learn_types(pipeline, result.head, current, train_items, held_items, fetcher,
                          cache, metrics, gate.serving_metrics)  # fmt: skip
    candidate = registry.register(result.head, metrics, parent=gate.parent, extra=extra)
    types: HeadVersion | None = None  # the serving head with the learned types, map rejected
    if candidate.version == gate.parent:
        if gate.early is None:  # early stopping kept the warm start: nothing to judge
            status, why = "unchanged", "no epoch beat the serving head on the held-out corrections"
        else:  # the best epoch is the one promoted early
            status, why = "promoted", gate.early["reason"]
    else:
        ok, why = gate.promote(candidate.version, metrics)
        if not ok:
            registry.reject(candidate.version, why)
        status = "promoted" if ok or gate.early else "rejected"
        if gate.early and not ok:  # the early head stays: the best epoch did not beat it
            candidate = registry.get(gate.early["version"])
            why = f"{gate.early['reason']}; the best epoch was rejected: {why}"
        if not ok and learned is not None:
            types = gate.carry_types(learned, metrics.get("type_accuracy"))
            if types is not None:
                why = f"{why}; {types.reason}"
    store.reset_pending(project, seen)
    summary = {
        "project": project,
        "status": status,
        "version": candidate.version,
        "reason": why,
        "metrics": metrics,
        "serving_metrics": serving_metrics,
        "early": gate.early,
        "types_version": types.version if types else None,
        "train": len(train),
        "held_out": len(held_out),
        "warm_start": warm,
        "epochs": len(result.losses),
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info("retrain of project %s: %s", project, summary)
    return summary


class _Gate:
    """Judges a retrain's candidates against the head serving now and promotes those the gate
    passes: at most one early (the first better epoch, while training goes on), then the best."""

    def __init__(
        self,
        pipeline: Pipeline,
        registry: ModelRegistry,
        held_out: list[TrainingSample],
        serving_head: AnomalyHead,
        parent: str | None,
        extra: dict[str, Any],
        started: float,
    ) -> None:
        self.pipeline, self.registry, self.held_out = pipeline, registry, held_out
        self.serving_head = serving_head
        self.parent, self.extra, self.started = parent, extra, started
        #: The serving head's judged metrics: the one the retrain started from, then the early one.
        self.serving_metrics: dict[str, float] | None = None
        self.first_serving_metrics: dict[str, float] | None = None
        #: What was promoted early: version, epoch, seconds since the job started, reason.
        self.early: dict[str, Any] | None = None

    def offer_early(self, better: Improvement) -> None:
        """``train_head``'s ``on_improved``: promote the first better epoch that passes."""
        if self.early is not None:
            return
        if self.serving_metrics is None:  # a warm start: the serving head is epoch 0
            self.serving_metrics = judge_head(self.pipeline, self.serving_head, self.held_out,
                                              better.start_maps)  # fmt: skip
        epoch, head = better.epoch, better.head()
        metrics = judge_head(self.pipeline, head, self.held_out, better.maps)
        ok, _ = self.registry.decide(f"epoch {epoch}", metrics, self.serving_metrics)
        if not ok:  # nothing registered: the best epoch is judged at the end
            return
        candidate = self.registry.register(head, metrics, parent=self.parent,
                                           extra={**self.extra, "epoch": epoch})  # fmt: skip
        ok, why = self.promote(candidate.version, metrics)
        if not ok:
            self.registry.reject(candidate.version, why)
            return
        seconds = round(time.perf_counter() - self.started, 2)
        self.early = {"version": candidate.version, "epoch": epoch, "seconds": seconds,
                      "reason": f"epoch {epoch} promoted early ({seconds} s): {why}"}  # fmt: skip
        logger.info("retrain: %s", self.early["reason"])

    def carry_types(self, learned: TypeClassifier, accuracy: float | None) -> HeadVersion | None:
        """The map head was rejected, but the defect types it learned from the corrections need
        not wait for a later promotion: serve them on the head that stays (the same map
        weights, so the same held-out metrics), unless they type the held-out regions worse
        than the types it has. None when nothing changed (no trained head serves, it already
        has these types, or they are worse)."""
        serving = self.registry.serving()
        if serving is None:  # the training-free head serves: no head file to carry them in
            return None
        head = load_head(serving.path, self.pipeline.clip.backbone_id)
        if head.type_classifier is not None and head.type_classifier.to_dict() == learned.to_dict():
            return None
        before = (self.serving_metrics or {}).get("type_accuracy")
        if accuracy is not None and before is not None and accuracy < before:
            logger.info("retrain: learned types kept back: held-out type accuracy %.3f < %.3f",
                        accuracy, before)  # fmt: skip
            return None
        head.type_classifier = learned
        metrics = {**(self.serving_metrics or {})}
        if accuracy is not None:
            metrics["type_accuracy"] = accuracy
        counts = dict(zip(learned.labels, learned.examples, strict=True))
        reason = f"defect types learned from corrected regions {counts} serve on {serving.version}"
        if accuracy is not None and before is not None:
            reason += f" (held-out type accuracy {accuracy:.3f} >= {before:.3f})"
        carrier = self.registry.register(head, metrics, parent=serving.version,
                                         extra={**self.extra, "types_only": True})  # fmt: skip
        try:
            promoted = self.registry.promote(carrier.version, reason,
                                             shapes=pipeline_shapes(self.pipeline))  # fmt: skip
        except RegistryError as exc:
            logger.warning("retrain: the learned types could not be served: %s", exc)
            return None
        self.parent = promoted.version
        logger.info("retrain: %s", reason)
        return promoted

    def promote(self, version: str, metrics: dict[str, float]) -> tuple[bool, str]:
        """Gate ``version`` against the serving head and serve it if it passes."""
        ok, why = self.registry.decide(version, metrics, self.serving_metrics)
        if ok:
            try:  # the head proves itself on this very backbone before it serves
                self.registry.promote(version, why, shapes=pipeline_shapes(self.pipeline))
            except RegistryError as exc:
                return False, str(exc)
            self.parent = version
            self.first_serving_metrics = self.first_serving_metrics or self.serving_metrics
            self.serving_metrics = metrics
        return ok, why


#: Optimiser steps a retrain of a FRESH head takes at least: 10 epochs of 32 corrections are 40
#: steps, too few for a fresh head to match the training-free one (docs/method.md §13, "The
#: loop, measured"). A warm start has no floor.
MIN_STEPS = 160


def epochs_for(samples: int, epochs: int, batch_size: int, min_steps: int = MIN_STEPS) -> int:
    """``epochs``, or more when a small correction set would give fewer than ``min_steps``."""
    batches = max(1, math.ceil(samples / batch_size))
    return max(epochs, math.ceil(min_steps / batches))


def judge_head(
    pipeline: Pipeline,
    head: AnomalyHead,
    held_out: list[TrainingSample],
    maps: HeldOutMaps | None = None,
) -> dict[str, float]:
    """What the promotion gate compares (``ModelRegistry.decide``): the held-out pixel metrics
    (mean over classes; AUROC ranks pixels whatever the threshold) and what the annotator sees
    at the head's own calibrated threshold (``training.region_metrics``: region Dice, F1, and
    whether it returns any region on the held-out defects). One pass of the head over
    ``held_out``, none when its ``maps`` on them are given (``TrainResult.held_out_maps``)."""
    held = maps if maps is not None else held_out_maps(pipeline, head, held_out)
    return {
        **evaluate_maps(held, head.thresholds)["mean"],
        **head_region_metrics(pipeline, head, held_out, held),
    }


def learn_types(
    pipeline: Pipeline,
    candidate: AnomalyHead,
    serving: AnomalyHead,
    train: list[Correction],
    held_out: list[Correction],
    fetcher: ImageFetcher,
    cache: Path,
    metrics: dict[str, float],
    serving_metrics: dict[str, float] | None,
) -> TypeClassifier | None:
    """Fit the defect-type classifier on the labelled regions of ``train`` into ``candidate``
    (it keeps the one it was warm-started with when fewer than two labels were corrected), and
    report both heads' type accuracy on ``held_out``'s regions (``type_accuracy``; the map
    gate does not use it, :meth:`_Gate.carry_types` does). Returns the fitted classifier."""
    named = {label for c in train + held_out if not c.was_cancelled for label in c.label_masks}
    if len(named) < 2:  # one label ("Defect"): no types to tell apart, nothing to fetch
        return None
    examples = _type_examples(pipeline, train, fetcher, cache, predicted=True)
    classifier = fit_types(examples)
    if classifier is not None:
        candidate.type_classifier = classifier
    held = _type_examples(pipeline, held_out, fetcher, cache)
    labels = sorted({e.label for e in examples + held})
    if len(labels) < 2 or not held:
        return classifier
    accuracy = type_accuracy(pipeline, candidate.type_classifier, held, labels)
    if accuracy is not None:
        metrics["type_accuracy"] = accuracy
    before = type_accuracy(pipeline, serving.type_classifier, held, labels)
    if serving_metrics is not None and before is not None:
        serving_metrics["type_accuracy"] = before
    return classifier


def _type_examples(
    pipeline: Pipeline,
    corrections: list[Correction],
    fetcher: ImageFetcher,
    cache: Path,
    predicted: bool = False,
) -> list[TypeExample]:
    """The corrected regions of ``corrections``; with ``predicted``, also the regions the
    pipeline predicts on those images, labelled by the corrections they lie on."""
    examples: list[TypeExample] = []
    for correction in corrections:
        if not correction.label_masks:
            continue
        try:
            image = load_image(cached_fetch(correction.image, correction.task_id, fetcher, cache))
            masks = {label: correction.label_mask(label) for label in correction.label_masks}
            examples += type_examples(pipeline, image, masks, correction.category)
            if predicted:
                examples += predicted_examples(pipeline, image, masks, correction.category)
        except Exception as exc:  # one bad image must not sink the whole job
            logger.warning("correction %s: no type examples: %s", correction.annotation_id, exc)
    return examples


def _prepare(
    pipeline: Pipeline, corrections: list[Correction], fetcher: ImageFetcher, cache: Path
) -> list[TrainingSample]:
    def items() -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        for correction in corrections:
            try:
                image = load_image(
                    cached_fetch(correction.image, correction.task_id, fetcher, cache)
                )
                mask = correction.mask(image.shape[:2])
            except Exception as exc:  # one bad image must not sink the whole job
                logger.warning("correction %s skipped: %s", correction.annotation_id, exc)
                continue
            yield image, mask, correction.category or ""

    return prepare_samples(pipeline, items(), len(corrections), progress=False)
