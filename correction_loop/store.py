"""Corrections in Redis, the system of record for everything people fixed in Label Studio.

Its keys (``{prefix}:correction:{id}``, per-project sets and pending counters, the change
stream) are named in :mod:`correction_loop.keys`; ``{prefix}`` defaults to ``clipsam``. The
stream is trimmed approximately to :data:`STREAM_MAXLEN`; the pending counter drives "retrain
after N corrections" (the trainer subtracts what it saw).

Each change is written in one MULTI/EXEC transaction guarded by WATCH on the correction's key,
so a replayed or concurrently delivered webhook is stored once, streamed once and counted once.
Redis errors are not caught here: the webhook spools the event and retries later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from redis.exceptions import WatchError

from correction_loop import keys
from correction_loop.corrections import Correction, correction_from_event

logger = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000
_MGET_CHUNK = 500
T = TypeVar("T")


class CorrectionStore:
    """Upserts, deletes and lists corrections; every write is atomic and idempotent."""

    def __init__(self, redis: redis.Redis, prefix: str = keys.PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix

    # -- keys ---------------------------------------------------------------------------------
    def correction_key(self, annotation_id: int) -> str:
        return keys.correction(annotation_id, self.prefix)

    def project_key(self, project: str) -> str:
        return keys.project_corrections(project, self.prefix)

    def pending_key(self, project: str) -> str:
        return keys.pending(project, self.prefix)

    @property
    def projects_key(self) -> str:
        return keys.projects(self.prefix)

    @property
    def stream_key(self) -> str:
        return keys.corrections_stream(self.prefix)

    # -- webhook events -----------------------------------------------------------------------
    def apply_event(self, event: dict[str, Any], **correction_kwargs: Any) -> str:
        """Store what a webhook event changes: upserted, unchanged, deleted or ignored.

        ``correction_kwargs`` go to :func:`correction_from_event` (``category_key``,
        ``default_category``). Bulk events are validated whole before anything is written.
        """
        if not isinstance(event, dict):
            raise ValueError(f"event must be a JSON object, got {type(event).__name__}")
        action = event.get("action")
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            upserted = self.upsert(correction_from_event(event, **correction_kwargs))
            return "upserted" if upserted else "unchanged"
        if action == "ANNOTATIONS_CREATED":
            corrections = [
                correction_from_event(e, **correction_kwargs) for e in _split_bulk(event)
            ]
            changed = self.upsert_many(corrections)
            logger.info(
                "%s: %d of %d annotation(s) new or changed", action, changed, len(corrections)
            )
            return "upserted" if changed else "unchanged"
        if action == "ANNOTATIONS_DELETED":
            items = event.get("annotations")
            if not isinstance(items, list):
                raise ValueError("ANNOTATIONS_DELETED event has no 'annotations' list")
            ids = [_annotation_id(item) for item in items]
            return "deleted" if self.delete(ids) else "unchanged"
        logger.debug("event %r ignored by the corrections store", action)
        return "ignored"

    # -- writes -------------------------------------------------------------------------------
    def upsert_many(self, corrections: Iterable[Correction]) -> int:
        """:meth:`upsert` each one; how many were new or changed."""
        return sum(self.upsert(correction) for correction in corrections)

    def upsert(self, correction: Correction) -> bool:
        """Store ``correction``; False when the same content is already there (a replay)."""
        key = self.correction_key(correction.annotation_id)
        member = str(correction.annotation_id)

        def write(pipe: redis.client.Pipeline) -> bool:
            old = _load(pipe.get(key), key)
            if old == correction:
                return False
            pipe.multi()
            pipe.set(key, correction.to_json())
            if old is not None and old.project != correction.project:  # moved: rare, but exact
                pipe.srem(self.project_key(old.project), member)
                pipe.incr(self.pending_key(old.project))
            pipe.sadd(self.project_key(correction.project), member)
            pipe.sadd(self.projects_key, correction.project)
            pipe.incr(self.pending_key(correction.project))
            self._stream(pipe, "upserted", correction.annotation_id, correction.project)
            return True

        changed = self._transaction(key, write)
        if changed:
            logger.info(
                "correction %d (task %d, project %s) stored: defect=%s cancelled=%s",
                correction.annotation_id, correction.task_id, correction.project,
                correction.has_defect, correction.was_cancelled,
            )  # fmt: skip
        return changed

    def delete(self, annotation_ids: Iterable[int]) -> int:
        """Remove these corrections; unknown ids are skipped. Returns how many were removed."""
        removed = 0
        for annotation_id in annotation_ids:
            key = self.correction_key(annotation_id)

            def write(
                pipe: redis.client.Pipeline, key: str = key, aid: int = annotation_id
            ) -> bool:
                raw = pipe.get(key)
                if raw is None:
                    return False
                old = _load(raw, key)
                pipe.multi()
                pipe.delete(key)
                if old is not None:
                    pipe.srem(self.project_key(old.project), str(int(aid)))
                    pipe.incr(self.pending_key(old.project))
                self._stream(pipe, "deleted", int(aid), old.project if old else "")
                return True

            if self._transaction(key, write):
                removed += 1
                logger.info("correction %d deleted", int(annotation_id))
        return removed

    def reset_pending(self, project: str, seen: int) -> None:
        """Subtract the ``seen`` corrections a training run took in (never below zero).

        Not a reset to 0: corrections that arrive while training must still count next time.
        """
        if seen < 0:
            raise ValueError(f"seen must be >= 0, got {seen}")
        key = self.pending_key(project)

        def write(pipe: redis.client.Pipeline) -> None:
            current = int(pipe.get(key) or 0)
            pipe.multi()
            pipe.set(key, max(0, current - seen))

        self._transaction(key, write)

    # -- reads --------------------------------------------------------------------------------
    def get(self, annotation_id: int) -> Correction | None:
        key = self.correction_key(annotation_id)
        return _load(self.redis.get(key), key)

    def list_project(self, project: str) -> list[Correction]:
        """Every correction of ``project``, sorted by annotation id (a stable training order)."""
        ids = sorted(int(_text(m)) for m in self.redis.smembers(self.project_key(str(project))))
        corrections = []
        for start in range(0, len(ids), _MGET_CHUNK):
            keys = [self.correction_key(i) for i in ids[start : start + _MGET_CHUNK]]
            for key, raw in zip(keys, self.redis.mget(keys), strict=True):
                correction = _load(raw, key)
                if correction is not None:
                    corrections.append(correction)
        return corrections

    def projects(self) -> list[str]:
        members = [_text(m) for m in self.redis.smembers(self.projects_key)]
        return sorted(members, key=lambda p: (not p.isdigit(), int(p) if p.isdigit() else 0, p))

    def pending(self, project: str) -> int:
        return int(self.redis.get(self.pending_key(str(project))) or 0)

    def stream(self, since: str = "0-0", count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` change entries after stream id ``since`` (exclusive), oldest first."""
        reply: Any = self.redis.xread({self.stream_key: since}, count=count)  # [(key, entries)]
        entries: list[tuple[str, dict[str, str]]] = []
        for _stream, items in reply or []:
            for entry_id, values in items:
                entries.append(
                    (_text(entry_id), {_text(k): _text(v) for k, v in values.items()})
                )  # fmt: skip
        return entries

    def last_change(self) -> str:
        """The id of the newest change entry, ``"0-0"`` before any. Every write adds one, so
        an unchanged id means unchanged corrections (readers can skip a full scan)."""
        reply: Any = self.redis.xrevrange(self.stream_key, count=1)
        return _text(reply[0][0]) if reply else "0-0"

    # -- helpers ------------------------------------------------------------------------------
    def _stream(self, pipe: redis.client.Pipeline, action: str, aid: int, project: str) -> None:
        pipe.xadd(
            self.stream_key,
            {"action": action, "annotation_id": str(aid), "project": project},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )

    def _transaction(self, key: str, write: Callable[[redis.client.Pipeline], T]) -> T:
        """Run ``write`` under WATCH ``key``; it reads, calls ``multi()`` and queues the writes.

        A concurrent change to ``key`` between the read and EXEC retries the whole decision.
        """
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    outcome = write(pipe)
                    if pipe.explicit_transaction:
                        pipe.execute()
                    else:
                        pipe.unwatch()
                    return outcome
                except WatchError:
                    logger.debug("%s changed concurrently; retrying", key)
                    continue


def _split_bulk(event: dict[str, Any]) -> list[dict[str, Any]]:
    """One single-annotation event per item of an ``ANNOTATIONS_CREATED`` payload.

    Label Studio 1.23 sends ``"annotation": [...]`` with ``"task": [...]``; a list under
    ``"annotations"`` and tasks embedded in each annotation are accepted too.
    """
    annotations = event.get("annotations", event.get("annotation"))
    if not isinstance(annotations, list):
        raise ValueError("ANNOTATIONS_CREATED event has no list of annotations")
    tasks = event.get("task", event.get("tasks")) or []
    if isinstance(tasks, dict):
        tasks = [tasks]
    by_id = {t.get("id"): t for t in tasks if isinstance(t, dict)}
    events = []
    for annotation in annotations:
        if not isinstance(annotation, dict):
            raise ValueError("ANNOTATIONS_CREATED: annotations must be objects")
        task = annotation.get("task")
        if not isinstance(task, dict):
            task = by_id.get(task)
        if task is None:
            raise ValueError(
                f"ANNOTATIONS_CREATED: no task for annotation {annotation.get('id')!r}"
            )
        events.append({"action": "ANNOTATION_CREATED", "annotation": annotation, "task": task,
                       "project": event.get("project")})  # fmt: skip
    return events


def _annotation_id(item: Any) -> int:
    value = item.get("id") if isinstance(item, dict) else item
    if value is None or isinstance(value, bool):
        raise ValueError(f"deleted annotation without an id: {item!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"annotation id must be an integer, got {value!r}") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _load(raw: bytes | str | None, key: str) -> Correction | None:
    """Parse a stored record; a corrupt one is logged and treated as absent (then rewritten)."""
    if raw is None:
        return None
    try:
        return Correction.from_json(raw)
    except (ValueError, TypeError) as exc:
        logger.error("unreadable correction at %s: %s", key, exc)
        return None
