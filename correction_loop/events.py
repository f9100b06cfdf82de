"""The webhook hand-off point: accept an event in well under Label Studio's 1 s, never lose it.

Each event is appended to a JSON-lines log under ``MODEL_DIR/events/`` and fsynced before the
webhook answers (a write-ahead log); a write that fails is undone, so the log holds exactly the
events that were answered 200 (see :class:`EventLog`). ``EventPump`` then moves events, in
order, into the corrections store; if Redis is down they simply wait in the log and flow once it
is back, and a restart resumes from the last applied line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from clipsam.atomic import atomic_write_text
from clipsam.log_throttle import ThrottledWarning

logger = logging.getLogger(__name__)

#: Failures that mean "the store is unavailable, keep the event and retry".
RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass
class _Ticket:
    """One event waiting for its batch's write."""

    data: bytes
    done: bool = False
    error: BaseException | None = None


class EventLog:
    """Append-only, fsynced JSON lines: one line per accepted webhook event.

    A record counts once it is whole and fsynced; :meth:`record` returning is the only thing
    that lets the webhook answer 200. A write or fsync that fails (``ENOSPC``, ``EIO``) is undone:
    the file is truncated back to the last complete record before the error reaches the caller,
    so an event answered with an error is never applied later and the next record never lands
    on a fragment. Writers hold an exclusive ``flock`` from the first byte to the fsync (or the
    undo), and readers take the committed size under the same lock (:meth:`committed_size`), so
    the pump never sees a record that may still be undone. Bytes go through ``os.write`` on a raw
    descriptor: no buffered file object is left behind to flush later.
    """

    def __init__(self, model_dir: Path) -> None:
        self.path = model_dir / "events" / "webhook.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._turn = threading.Condition()
        self._pending: list[_Ticket] = []
        self._writing = False
        self.appended = threading.Event()
        #: Where an undo failed (truncate refused too): nothing past it is committed.
        self._void_from: int | None = None
        self.repaired_bytes = self.repair()

    def record(self, action: str, payload: dict[str, Any]) -> None:
        """Append one event durably, or raise ``OSError`` with the file left as it was.

        Group commit: events that arrive while a write is in flight are written and fsynced
        together by the next writer, so a burst costs one fsync per batch instead of one per
        event (under a busy disk a serial fsync each put a burst of 16 past the 1 s budget).
        A failed batch is undone whole and every event in it gets the error.
        """
        line = json.dumps({"received_at": time.time(), "action": action, "payload": payload})
        ticket = _Ticket((line + "\n").encode())
        with self._turn:
            self._pending.append(ticket)
            while not ticket.done and self._writing:
                self._turn.wait()
            if not ticket.done:  # this thread writes everything pending, its own event too
                self._writing = True
                batch, self._pending = self._pending, []
        if not ticket.done:
            error: BaseException | None = None
            try:
                self._append(b"".join(t.data for t in batch))
            except BaseException as exc:
                error = exc
            with self._turn:
                for t in batch:
                    t.done, t.error = True, error
                self._writing = False
                self._turn.notify_all()
        if ticket.error is not None:
            raise ticket.error
        self.appended.set()
        logger.info("webhook %s stored (%d bytes)", action, len(ticket.data))

    def _append(self, data: bytes) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                with _flock(fd, fcntl.LOCK_EX):
                    start = self._clean_end(fd)
                    try:
                        _write_all(fd, data)
                        os.fsync(fd)
                    except BaseException as exc:
                        self._undo(fd, start, exc)
                        raise
            finally:
                os.close(fd)

    def committed_size(self) -> int:
        """Bytes of whole, fsynced records: what readers may consume."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            with _flock(fd, fcntl.LOCK_SH):
                size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        void = self._void_from
        return size if void is None else min(size, void)

    def repair(self) -> int:
        """Cut a torn tail (a crash mid-write) back to the last whole line; returns bytes cut."""
        if not self.path.exists():
            return 0
        fd = os.open(self.path, os.O_RDWR)
        try:
            with _flock(fd, fcntl.LOCK_EX):
                size = os.fstat(fd).st_size
                end = _last_line_end(fd, size)
                if end < size:
                    os.ftruncate(fd, end)
                    os.fsync(fd)
                    logger.warning(
                        "%s: cut a torn tail of %d byte(s) (a write that never completed)",
                        self.path, size - end,
                    )  # fmt: skip
                return size - end
        finally:
            os.close(fd)

    def _clean_end(self, fd: int) -> int:
        """The size to append at; an earlier undo that failed is retried first."""
        size = os.fstat(fd).st_size
        if self._void_from is not None:
            os.ftruncate(fd, self._void_from)  # raises while the disk still refuses
            os.fsync(fd)
            logger.warning("%s: an earlier failed write is undone now", self.path)
            size, self._void_from = self._void_from, None
        elif size and os.pread(fd, 1, size - 1) != b"\n":
            # Another process crashed mid-write: never append onto its fragment.
            end = _last_line_end(fd, size)
            os.ftruncate(fd, end)
            logger.warning("%s: cut a torn tail of %d byte(s)", self.path, size - end)
            size = end
        return size

    def _undo(self, fd: int, start: int, exc: BaseException) -> None:
        try:
            os.ftruncate(fd, start)
            with contextlib.suppress(OSError):
                os.fsync(fd)
        except OSError as undo_exc:
            self._void_from = start  # readers stop here until a later record truncates
            logger.error("%s: could not undo a failed write (%s)", self.path, undo_exc)
        logger.error("webhook event NOT stored (%s); the log is left as it was", exc)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (short writes happen near a full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write returned 0 bytes")
        view = view[written:]


def _last_line_end(fd: int, size: int, chunk: int = 65536) -> int:
    """Offset just after the last ``\\n`` at or before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        begin = max(0, end - chunk)
        block = os.pread(fd, end - begin, begin)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


class EventPump:
    """Applies logged events to ``apply`` in order, remembering the byte offset it reached.

    One pump per ``MODEL_DIR`` works at a time (a file lock), so several backend processes can
    run one each. ``apply`` raising a :data:`RETRYABLE` error stops the pass and the event is
    retried later; any other error moves the event to ``rejected.jsonl`` with the reason.
    """

    def __init__(
        self,
        log: EventLog,
        apply: Callable[[dict[str, Any]], None],
        poll: float = 1.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.log = log
        self.apply = apply
        self.poll = poll
        self.max_backoff = max_backoff
        self.passes = 0  # passes over the log so far (tests check the backoff holds)
        self._outage = ThrottledWarning(logger)
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
        return self.log.committed_size() - self._read_offset()

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
        end = self.log.committed_size()  # never past a record that may still be undone
        with self.log.path.open("rb") as f:
            f.seek(offset)
            while offset < end:
                raw = f.readline(end - offset)
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                try:
                    self.apply(json.loads(raw)["payload"])
                except RETRYABLE as exc:
                    self.last_error = f"store unavailable, events kept in the log: {exc}"
                    self._outage.warning("%s", self.last_error)
                    return applied
                except Exception as exc:  # a malformed event must not block the ones behind it
                    logger.error("event rejected (kept in %s): %s", self.rejected_path.name, exc)
                    self._reject(raw, exc)
                offset += len(raw)
                applied += 1
                self._write_offset(offset)
        if self.last_error is not None:
            self._outage.recovered("store reachable again; the event log drains")
        self.last_error = None
        return applied

    def _loop(self) -> None:
        backoff = self.poll
        while not self._stop.is_set():
            self.log.appended.clear()
            self.passes += 1
            try:
                self.run_once()
            except Exception:  # the pump must outlive any surprise
                logger.exception("event pump pass failed")
            if self.last_error:
                # Store down: new events wait in the log; they must not cut the backoff short.
                backoff = min(self.max_backoff, backoff * 2)
                self._stop.wait(backoff)
            else:
                backoff = self.poll
                self.log.appended.wait(backoff)

    def _read_offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_offset(self, offset: int) -> None:
        atomic_write_text(self.offset_path, str(offset), durable=False)

    def _reject(self, raw: bytes, exc: Exception) -> None:
        with self.rejected_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"error": str(exc), "line": raw.decode(errors="replace")}) + "\n")


@contextlib.contextmanager
def _flock(fd: int, mode: int) -> Iterator[None]:
    """Writers (exclusive) and size readers (shared) of the log exclude each other."""
    fcntl.flock(fd, mode)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
