"""Hot reload: every backend process follows the registry's serving head, without a restart.

A promotion is announced on Redis pub/sub (and kept in the registry's pointer file); this
thread loads the new head in the background, validates it on the live backbone, and swaps it in
with one assignment, so requests in flight finish on the head they started with. Only the head
reloads: CLIP, SAM and the feature cache stay as they are. The pointer is also re-read every
``poll`` seconds, so a missed message (Redis restarting) only delays the swap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Protocol

import redis

from clipsam import Pipeline
from clipsam.atomic import atomic_write_bytes
from clipsam.heads import load_head
from clipsam.log_throttle import ThrottledWarning
from correction_loop.head_files import HEAD_FILE, SERVING_FILE, UnknownVersionError
from correction_loop.registry import ModelRegistry
from training.head_check import check_head, pipeline_shapes

logger = logging.getLogger(__name__)


class ServedModel(Protocol):
    """What the loop needs of the process's model service (``backend.model.ModelService``)."""

    #: Why the wanted head is not the one served; cleared once a reload serves it.
    fallback: str | None
    #: A head version that failed to load here, so it is not retried on every poll.
    rejected_head: str | None

    @property
    def ready(self) -> bool: ...

    def wait(self, timeout: float) -> Pipeline: ...


class HeadReloader:
    def __init__(
        self,
        model: ServedModel,
        registry: ModelRegistry,
        poll: float = 5.0,
    ) -> None:
        self.model = model
        self.registry = registry
        self.connection = registry.redis  # promotions are announced on the registry's Redis
        self.poll = poll
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self._failed: str | None = None
        self._thread: threading.Thread | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._loaded: set[str] = set()  # versions this process hot-reloaded
        #: The serving version the registry named at the last sync (for /health).
        self.registry_version: str | None = None
        self._outage = ThrottledWarning(logger)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="head-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following promotions; closing the subscription wakes the blocked reader."""
        self._stop.set()
        _close(self._pubsub)
        if self._thread is not None:
            self._thread.join(timeout=self.poll + 2)

    def sync(self) -> bool:
        """Serve the registry's serving head if it is not served yet; True when swapped."""
        if not self.model.ready:
            return False
        pipeline = self.model.wait(0)
        version = self._serving_version()
        if version is None:
            return self._back_to_training_free(pipeline)
        if version in (pipeline.head.version, self._failed, self.model.rejected_head):
            return False  # already served, or known not to load (reported once, not per poll)
        with self._lock:
            try:
                head = load_head(self._local_file(version), pipeline.clip.backbone_id)
                check_head(head, pipeline_shapes(pipeline))
            except Exception as exc:
                self._failed = version
                self.last_error = f"head {version} not loaded: {exc}"
                logger.error("%s", self.last_error)
                return False
            previous = pipeline.head.version
            pipeline.set_head(head)
            self._loaded.add(version)
            self.last_error = self.model.fallback = None
            logger.info("hot-reloaded head %s (was %s)", head.version, previous)
            return True

    def _serving_version(self) -> str | None:
        """The registry's pointer (remembered for /health); else Redis's copy of it."""
        self.registry_version = self._registry_version()
        return self.registry_version

    def _registry_version(self) -> str | None:
        serving = self.registry.serving()
        if serving is not None:
            return serving.version
        pointer = self.registry.heads_dir / SERVING_FILE
        if self.connection is None or pointer.exists():
            return None
        try:
            raw = self.connection.get(self.registry.serving_key)
        except redis.exceptions.RedisError:
            return None
        version = json.loads(raw).get("version") if raw else None
        return version if isinstance(version, str) else None

    def _back_to_training_free(self, pipeline: Pipeline) -> bool:
        """After a rollback past the first promotion; a head given by CLIPSAM_HEAD stays."""
        if pipeline.head.kind == "none":
            return False
        if pipeline.head.version not in self._loaded:
            try:
                self.registry.get(pipeline.head.version)
            except UnknownVersionError:
                return False  # not a registry head: CLIPSAM_HEAD chose it
        with self._lock:
            previous = pipeline.head.version
            pipeline.set_head(pipeline.new_head(kind="none"))
        logger.info("serving the training-free head again (was %s)", previous)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._pubsub is None and self.connection is not None:
                    self._pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
                    self._pubsub.subscribe(self.registry.channel)
                if self._pubsub is not None:
                    message = self._pubsub.get_message(timeout=self.poll)
                    if message is not None:
                        logger.info("promotion announced: %s", message.get("data"))
                else:
                    self._stop.wait(self.poll)
            except Exception as exc:  # Redis restarting, or stop() closed the subscription
                if self._stop.is_set():
                    break
                self._outage.warning("promotion channel unavailable (%s); polling instead", exc)
                _close(self._pubsub)
                self._pubsub = None
                self._stop.wait(self.poll)
            try:
                self.sync()
            except Exception:
                logger.exception("head sync failed")
        _close(self._pubsub)

    def _local_file(self, version: str) -> Path:
        """The head file; copied from Redis when the worker wrote it on another machine."""
        local = self.registry.heads_dir / version / HEAD_FILE
        if local.is_file() or self.connection is None:
            return local
        blob = self.connection.get(self.registry.blob_key(version))
        if not isinstance(blob, bytes):
            return local  # load_head then names the missing file
        cache = self.registry.model_dir / "remote_heads" / version / HEAD_FILE
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, blob, durable=False)  # a cache: Redis still has it
        return cache


def _close(pubsub: redis.client.PubSub | None) -> None:
    if pubsub is not None:
        with contextlib.suppress(Exception):
            pubsub.close()
