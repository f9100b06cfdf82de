"""The webhook hand-off point: accept an event in well under Label Studio's 1 s, never lose it.

Each event is appended to a JSON-lines log under ``MODEL_DIR/events/`` and fsynced before the
webhook answers (a write-ahead log). ``EventPump`` then moves events, in order, into the
corrections store; if Redis is down they simply wait in the log and flow once it is back, and a
restart resumes from the last applied line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

logger = logging.getLogger(__name__)

#: Failures that mean "the store is unavailable, keep the event and retry".
RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class EventLog:
    """Append-only, fsynced JSON lines: one line per accepted webhook event."""

    def __init__(self, model_dir: Path) -> None:
        self.path = model_dir / "events" / "webhook.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.appended = threading.Event()

    def record(self, action: str, payload: dict[str, Any]) -> None:
        line = json.dumps({"received_at": time.time(), "action": action, "payload": payload})
        with self._lock, self.path.open("a", encoding="utf-8") as f, _flock(f.fileno()):
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.appended.set()
        logger.info("webhook %s stored (%d bytes)", action, len(line))


class EventPump:
    """Applies logged events to ``apply`` in order, remembering the byte offset it reached.

    One pump per ``MODEL_DIR`` works at a time (a file lock), so several backend processes can
    run one each. ``apply`` raising a :data:`RETRYABLE` error stops the pass and the event is
    retried later; any other error moves the event to ``rejected.jsonl`` with the reason.
    """

    def __init__(self, log: EventLog, apply: Callable[[dict[str, Any]], None], poll: float = 1.0):
        self.log = log
        self.apply = apply
        self.poll = poll
        self.offset_path = log.path.with_suffix(".offset")
        self.rejected_path = log.path.with_name("rejected.jsonl")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="event-pump", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.log.appended.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def pending_bytes(self) -> int:
        size = self.log.path.stat().st_size if self.log.path.exists() else 0
        return size - self._read_offset()

    def run_once(self) -> int:
        """Apply every complete line after the stored offset; returns how many were applied."""
        lock_path = self.log.path.with_suffix(".pump.lock")
        with lock_path.open("a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another process's pump is on it
            return self._drain()

    def _drain(self) -> int:
        if not self.log.path.exists():
            return 0
        offset, applied = self._read_offset(), 0
        with self.log.path.open("rb") as f:
            f.seek(offset)
            for raw in iter(f.readline, b""):
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                try:
                    self.apply(json.loads(raw)["payload"])
                except RETRYABLE as exc:
                    self.last_error = f"store unavailable, events kept in the log: {exc}"
                    logger.warning("%s", self.last_error)
                    return applied
                except Exception as exc:  # a malformed event must not block the ones behind it
                    logger.error("event rejected (kept in %s): %s", self.rejected_path.name, exc)
                    self._reject(raw, exc)
                offset += len(raw)
                applied += 1
                self._write_offset(offset)
        self.last_error = None
        return applied

    def _loop(self) -> None:
        backoff = self.poll
        while not self._stop.is_set():
            self.log.appended.clear()
            try:
                self.run_once()
            except Exception:  # the pump must outlive any surprise
                logger.exception("event pump pass failed")
            backoff = min(5.0, backoff * 2) if self.last_error else self.poll
            self.log.appended.wait(backoff)

    def _read_offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_offset(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".offset.tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.offset_path)

    def _reject(self, raw: bytes, exc: Exception) -> None:
        with self.rejected_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"error": str(exc), "line": raw.decode(errors="replace")}) + "\n")


@contextlib.contextmanager
def _flock(fd: int) -> Iterator[None]:
    """Other processes appending to the same log wait for whole lines."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
