"""The registry's durable files under ``MODEL_DIR/heads``: versions, the pointer, the history.

Layout::

    MODEL_DIR/heads/<version>/head.safetensors   the head (clipsam.heads.save_head, atomic)
    MODEL_DIR/heads/<version>/meta.json          metrics, parent, status, reason (atomic)
    MODEL_DIR/heads/SERVING                      {"version", "path", "time"}; absent → no head
    MODEL_DIR/heads/history.jsonl                one line per action, appended and fsynced
    MODEL_DIR/heads/.lock                        fcntl.flock for read-modify-write

Every file is replaced atomically (:mod:`clipsam.atomic`: temp file, fsync, ``os.replace``),
so a crash leaves the old or the new state, never a partial one. :class:`HeadFiles` reads and
writes them, under the lock its callers take (:meth:`HeadFiles.locked`); what the registry does
with them (register, promote, roll back) is :mod:`correction_loop.registry`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clipsam.atomic import atomic_write_json, fsync_path
from clipsam.heads import HeadLoadError, read_head_metadata

logger = logging.getLogger(__name__)

HEADS_DIR = "heads"
HEAD_FILE = "head.safetensors"
META_FILE = "meta.json"
SERVING_FILE = "SERVING"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"
STATUSES = ("candidate", "promoted", "rejected", "retired")
#: Leftovers of crashed writes (staging dirs, temp files) older than this are swept away.
STALE_TEMP_SECONDS = 3600.0
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked (the files are left unchanged)."""


class UnknownVersionError(RegistryError, LookupError):
    """No head of that version is registered."""


@dataclass(frozen=True)
class HeadVersion:
    """One registered head: where it is, how it scored on held-out data, and its fate."""

    version: str
    path: Path
    created: str
    metrics: dict[str, float]
    parent: str | None
    status: str
    reason: str
    backbone_id: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


class HeadFiles:
    """The files of one ``heads`` folder; safe to share between threads and processes."""

    def __init__(self, heads_dir: Path) -> None:
        self.heads_dir = heads_dir
        self._held = threading.local()

    # ---- locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """``flock`` on ``heads/.lock``; re-entrant per thread, since public calls nest.

        flock locks belong to the open file, so two threads (or two registries) in one process
        exclude each other as well as other processes do. Readers of a read-only MODEL_DIR go
        without the lock: every file is replaced atomically, so they still see whole files.
        """
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        fd = self._open_lock(create=not shared)
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            self._held.depth = 1
            yield
        finally:
            self._held.depth = 0
            if fd is not None:
                os.close(fd)  # releases the lock

    def _open_lock(self, create: bool) -> int | None:
        path = self.heads_dir / LOCK_FILE
        if create:
            self.heads_dir.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return None  # no registry yet: nothing to read, nothing to guard
        except PermissionError:
            if create:
                raise
            logger.debug("read-only %s: reading without the lock", self.heads_dir)
            return None

    # ---- metadata -----------------------------------------------------------------------------
    def head_path(self, version: str) -> Path:
        return self.heads_dir / version / HEAD_FILE

    def meta_path(self, version: str) -> Path:
        return self.heads_dir / version / META_FILE

    def read_meta(self, version: str) -> dict[str, Any]:
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise UnknownVersionError(f"unknown head version {version!r} in {self.heads_dir}")
        path = self.meta_path(version)
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UnknownVersionError(
                f"unknown head version {version!r} in {self.heads_dir}"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path} is unreadable: {exc}") from exc
        if meta.get("version") != version:
            raise RegistryError(f"{path} describes {meta.get('version')!r}, not {version!r}")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.meta_path(meta["version"]), meta)

    def set_status(self, version: str, status: str, reason: str) -> HeadVersion | None:
        try:
            meta = self.read_meta(version)
        except UnknownVersionError:
            logger.warning("head %s is gone; cannot mark it %s", version, status)
            return None
        meta.update(status=status, reason=reason)
        self.write_meta(meta)
        return self.from_meta(meta)

    def all_metas(self) -> list[dict[str, Any]]:
        if not self.heads_dir.is_dir():
            return []
        metas = []
        for entry in self.heads_dir.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                metas.append(self.read_meta(entry.name))
            except RegistryError as exc:
                logger.warning("skipping %s: %s", entry, exc)
        metas.sort(key=lambda m: (m.get("seq", 0), m.get("created", ""), m["version"]))
        return metas

    def next_seq(self) -> int:
        return max((m.get("seq", 0) for m in self.all_metas()), default=0) + 1

    def from_meta(self, meta: dict[str, Any]) -> HeadVersion:
        version = meta["version"]
        return HeadVersion(
            version=version,
            path=self.head_path(version),
            created=meta.get("created", ""),
            metrics={k: float(v) for k, v in (meta.get("metrics") or {}).items()},
            parent=meta.get("parent"),
            status=meta.get("status", "candidate"),
            reason=meta.get("reason", ""),
            backbone_id=meta.get("backbone_id", ""),
            extra=dict(meta.get("extra") or {}),
        )

    def check_head_file(self, version: str) -> None:
        try:
            read_head_metadata(self.head_path(version))
        except HeadLoadError as exc:
            raise RegistryError(f"refusing to serve head {version}: {exc}") from exc

    # ---- the pointer and the history --------------------------------------------------------
    def serving_version(self) -> str | None:
        path = self.heads_dir / SERVING_FILE
        try:
            pointer = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            logger.error("%s is unreadable (%s); serving the training-free head", path, exc)
            return None
        version = pointer.get("version") if isinstance(pointer, dict) else None
        return version if isinstance(version, str) else None

    def write_pointer(self, version: str | None, when: str) -> None:
        path = self.heads_dir / SERVING_FILE
        if version is None:
            path.unlink(missing_ok=True)
            fsync_path(self.heads_dir)
            return
        relative = Path(HEADS_DIR) / version / HEAD_FILE
        atomic_write_json(path, {"version": version, "path": str(relative), "time": when})

    def append_history(
        self,
        action: str,
        version: str | None,
        reason: str,
        previous: str | None = None,
        when: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "time": when or now(),
            "action": action,
            "version": version,
            "reason": reason,
        }
        if action in ("promote", "rollback"):
            entry["previous"] = previous
        line = (json.dumps(entry) + "\n").encode()
        path = self.heads_dir / HISTORY_FILE
        with open(path, "a+b") as f:
            # A crash mid-append leaves a torn last line: end it so this one stays whole.
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_history(self) -> list[dict[str, Any]]:
        path = self.heads_dir / HISTORY_FILE
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s:%d is torn (crash mid-append?); skipped", path, number)
        return entries

    def promotion_stack(self) -> list[str]:
        """Replay the history into the chain of served versions that rollback walks back."""
        stack: list[str] = []
        for entry in self.read_history():
            version = entry.get("version")
            if entry.get("action") == "promote" and version:
                if not stack or stack[-1] != version:
                    stack.append(version)
            elif entry.get("action") == "rollback":
                if stack:
                    stack.pop()
                while stack and stack[-1] != version:
                    stack.pop()
        return stack

    # ---- staging -------------------------------------------------------------------------------
    def sweep_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for entry in self.heads_dir.glob(".*"):
            stale = entry.name.startswith(".incoming-") or entry.name.endswith(".tmp")
            try:
                if stale and entry.stat().st_mtime < cutoff:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    logger.info("removed %s, left by a crashed write", entry)
            except FileNotFoundError:
                continue


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def check_version_name(version: str) -> None:
    if not _VERSION_RE.match(version):
        raise RegistryError(f"head version {version!r} is not usable as a folder name")
