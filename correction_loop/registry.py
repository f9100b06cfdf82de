"""Versioned heads under ``MODEL_DIR/heads``: register, decide, promote, reject, roll back.

Only the small head is ever retrained, so every trained head is kept as a version and exactly
one (or none: the training-free head) is served. Layout::

    MODEL_DIR/heads/<version>/head.safetensors   the head (clipsam.heads.save_head, atomic)
    MODEL_DIR/heads/<version>/meta.json          metrics, parent, status, reason (atomic)
    MODEL_DIR/heads/SERVING                      {"version", "path", "time"}; absent → no head
    MODEL_DIR/heads/history.jsonl                one line per action, appended and fsynced
    MODEL_DIR/heads/.lock                        fcntl.flock for read-modify-write

Every file is replaced atomically (temp file, fsync, ``os.replace``), so a crash leaves the old
or the new state, never a partial one; ``SERVING`` only ever names a head already on disk.
With a Redis client, promotions and rollbacks are also announced to every backend process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsam.heads import HeadLoadError, read_head_metadata, save_head
from correction_loop import keys

if TYPE_CHECKING:
    import redis

    from clipsam.heads import AnomalyHead
    from training.head_check import BackboneShapes

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


class ModelRegistry:
    """Heads on disk as versions, one of them served; safe to share between processes."""

    def __init__(
        self, model_dir: str | Path, redis: redis.Redis | None = None, prefix: str = keys.PREFIX
    ) -> None:
        self.model_dir = Path(model_dir).absolute()
        self.heads_dir = self.model_dir / HEADS_DIR
        self.redis = redis
        self.prefix = prefix
        self._held = threading.local()

    # ---- Redis names ---------------------------------------------------------------------
    @property
    def serving_key(self) -> str:
        return keys.serving_head(self.prefix)

    @property
    def channel(self) -> str:
        return keys.head_promotions(self.prefix)

    def blob_key(self, version: str) -> str:
        return keys.head_blob(version, self.prefix)

    # ---- reading -------------------------------------------------------------------------
    def versions(self) -> list[HeadVersion]:
        """Every registered head, oldest first."""
        with self._locked(shared=True):
            metas = self._all_metas()
        return [self._from_meta(m) for m in metas]

    def get(self, version: str) -> HeadVersion:
        with self._locked(shared=True):
            return self._from_meta(self._read_meta(version))

    def serving(self) -> HeadVersion | None:
        """The served head, or None when the training-free head serves."""
        with self._locked(shared=True):
            version = self._serving_version()
            if version is None:
                return None
            try:
                return self._from_meta(self._read_meta(version))
            except UnknownVersionError:
                logger.error(
                    "%s names head %s, which is gone; serving the training-free head",
                    self.heads_dir / SERVING_FILE, version,
                )  # fmt: skip
                return None

    def history(self) -> list[dict[str, Any]]:
        """Every action so far, oldest first: ``{time, action, version, reason, ...}``."""
        with self._locked(shared=True):
            return self._read_history()

    # ---- deciding --------------------------------------------------------------------------
    def decide(
        self,
        candidate: str,
        candidate_metrics: dict[str, float],
        serving_metrics: dict[str, float] | None,
        key: str = "pixel_auroc",
        tolerance: float = 0.0,
        region_key: str = "region_dice",
        region_tolerance: float = 0.0,
    ) -> tuple[bool, str]:
        """Promote iff the candidate is not worse than the serving head on ``key`` and, when
        the metrics hold what the annotator sees (``training.region_metrics``), on
        ``region_key`` too, and returns regions on the held-out defects.

        "Not worse" is ``candidate >= serving - tolerance``. A missing or nan candidate score
        is worse than anything; a missing or nan serving score (or no serving head) loses.
        A candidate whose metrics have ``region_key`` must also have returned a region on some
        held-out defective image (``defect_images_with_regions`` > 0): a head that shows the
        annotator nothing is never promoted, whatever its AUROC. Metrics without
        ``region_key`` (heads judged before the region gate) are judged on ``key`` alone.
        Returns ``(ok, reason)`` with every number compared, for the history and the logs.
        """
        if math.isnan(tolerance) or math.isnan(region_tolerance):
            raise ValueError("tolerance must be a number, got nan")
        ok, parts = _compare(key, candidate_metrics, serving_metrics, tolerance)
        texts = [parts]
        if region_key in candidate_metrics:
            region_ok, region_text = _compare(
                region_key, candidate_metrics, serving_metrics, region_tolerance
            )
            shown = _score(candidate_metrics, "defect_images_with_regions")
            if not shown > 0:  # nan (no held-out defects) is not > 0 either
                region_ok = False
                region_text += (
                    f"; returns no region on held-out defects"
                    f" (defect_images_with_regions {shown:.2f})"
                )
            ok = ok and region_ok
            texts.append(region_text)
        verdict = "promote" if ok else "reject"
        return ok, f"{verdict} {candidate}: " + "; ".join(texts)

    # ---- writing ---------------------------------------------------------------------------
    def register(
        self,
        head: AnomalyHead,
        metrics: dict[str, float],
        parent: str | None,
        extra: dict[str, Any] | None = None,
    ) -> HeadVersion:
        """Store ``head`` as a candidate version; the same weights twice give one version."""
        clean_metrics = _clean_metrics(metrics)
        self.heads_dir.mkdir(parents=True, exist_ok=True)
        # Stage the head and its meta in a private folder, then rename the folder into place:
        # a version folder appears complete or not at all, and hashing happens outside the lock.
        staging = Path(tempfile.mkdtemp(dir=self.heads_dir, prefix=".incoming-"))
        staging.chmod(0o755)  # mkdtemp makes it private; backends may run as another user
        try:
            version = save_head(head, staging / HEAD_FILE, extra=extra)
            _check_version_name(version)
            with self._locked():
                self._sweep_stale_temps()
                target = self.heads_dir / version
                if target.exists():
                    if not self._meta_path(version).is_file():
                        raise RegistryError(f"{target} exists without {META_FILE}; move it away")
                    existing = self._from_meta(self._read_meta(version))
                    logger.info("head %s is already registered (%s)", version, existing.status)
                    return existing
                meta = {
                    "version": version,
                    "seq": self._next_seq(),
                    "created": _now(),
                    "metrics": clean_metrics,
                    "parent": parent,
                    "status": "candidate",
                    "reason": "registered",
                    "backbone_id": head.backbone_id,
                    "kind": head.kind,
                    "extra": dict(extra or {}),
                }
                _write_json_atomic(staging / META_FILE, meta)
                os.replace(staging, target)
                _fsync_dir(self.heads_dir)
                self._append_history("register", version, _metrics_text(clean_metrics))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("registered head %s (parent %s): %s", version, parent, clean_metrics)
        return self._from_meta(meta)

    def promote(
        self,
        version: str,
        reason: str,
        shapes: BackboneShapes | None = None,
        allow_backbone_change: bool = False,
    ) -> HeadVersion:
        """Serve ``version`` from now on; the head served before is retired.

        The head must prove itself first (:func:`training.head_check.check_head_file`: whole
        weights, all finite, a dry run on the backbone's ``shapes``, by default those its
        backbone id stands for), and must be for the serving head's backbone unless
        ``allow_backbone_change``; otherwise :class:`RegistryError` and nothing changes.
        """
        self._prove(version, self.get(version).backbone_id, shapes)  # slow: outside the lock
        with self._locked():
            meta = self._read_meta(version)
            self._check_head_file(version)
            previous = self._serving_version()
            if previous not in (None, version) and not allow_backbone_change:
                self._check_same_backbone(version, meta, previous)
            now = _now()
            self._write_pointer(version, now)  # the decisive step: old or new, never partial
            meta.update(status="promoted", reason=reason)
            self._write_meta(meta)
            if previous is not None and previous != version:
                self._set_status(previous, "retired", f"replaced by {version}")
            self._append_history("promote", version, reason, previous=previous, when=now)
            promoted = self._from_meta(meta)
            self._share(promoted)  # before the announcement; only heads that serve need it
            self._publish(promoted)
        logger.info("promoted head %s (was %s): %s", version, previous or "training-free", reason)
        return promoted

    def reject(self, version: str, reason: str) -> HeadVersion:
        """Keep ``version`` on disk for inspection, but mark it as never to be served."""
        with self._locked():
            meta = self._read_meta(version)
            if self._serving_version() == version:
                raise RegistryError(
                    f"head {version} is serving; roll back or promote another head before "
                    "rejecting it"
                )
            meta.update(status="rejected", reason=reason)
            self._write_meta(meta)
            self._append_history("reject", version, reason)
        logger.info("rejected head %s: %s", version, reason)
        return self._from_meta(meta)

    def rollback(self) -> HeadVersion | None:
        """Serve the head promoted before the current one; None → the training-free head.

        Each rollback undoes one promotion (promote A, B, C; rollback → B → A → None).
        Versions deleted from disk or rejected since are skipped. With nothing served, nothing
        changes.
        """
        with self._locked():
            current = self._serving_version()
            if current is None:
                logger.info("nothing to roll back: the training-free head is serving")
                return None
            stack = self._promotion_stack()
            if stack and stack[-1] == current:
                stack.pop()
            else:
                logger.warning(
                    "history does not end with the promotion of %s (crash mid-promote?); "
                    "rolling back to the last promotion it records", current,
                )  # fmt: skip
            target: str | None = None
            while stack:
                candidate = stack.pop()
                if candidate != current and self._usable(candidate):
                    target = candidate
                    break
                logger.warning("rollback skips head %s: no longer usable", candidate)
            now = _now()
            self._write_pointer(target, now)
            self._set_status(current, "retired", f"rolled back to {target or 'training-free'}")
            restored = None
            if target is not None:
                restored = self._set_status(
                    target, "promoted", f"restored by rollback of {current}"
                )
            self._append_history(
                "rollback", target, f"rolled back {current}", previous=current, when=now
            )
            self._publish(restored)
        logger.info("rolled back head %s; now serving %s", current, target or "training-free")
        return restored

    # ---- internals: locking ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, shared: bool = False) -> Iterator[None]:
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

    # ---- internals: metadata ---------------------------------------------------------------
    def _meta_path(self, version: str) -> Path:
        return self.heads_dir / version / META_FILE

    def _read_meta(self, version: str) -> dict[str, Any]:
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise UnknownVersionError(f"unknown head version {version!r} in {self.heads_dir}")
        path = self._meta_path(version)
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

    def _write_meta(self, meta: dict[str, Any]) -> None:
        _write_json_atomic(self._meta_path(meta["version"]), meta)

    def _set_status(self, version: str, status: str, reason: str) -> HeadVersion | None:
        try:
            meta = self._read_meta(version)
        except UnknownVersionError:
            logger.warning("head %s is gone; cannot mark it %s", version, status)
            return None
        meta.update(status=status, reason=reason)
        self._write_meta(meta)
        return self._from_meta(meta)

    def _all_metas(self) -> list[dict[str, Any]]:
        if not self.heads_dir.is_dir():
            return []
        metas = []
        for entry in self.heads_dir.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                metas.append(self._read_meta(entry.name))
            except RegistryError as exc:
                logger.warning("skipping %s: %s", entry, exc)
        metas.sort(key=lambda m: (m.get("seq", 0), m.get("created", ""), m["version"]))
        return metas

    def _next_seq(self) -> int:
        return max((m.get("seq", 0) for m in self._all_metas()), default=0) + 1

    def _from_meta(self, meta: dict[str, Any]) -> HeadVersion:
        version = meta["version"]
        return HeadVersion(
            version=version,
            path=self.heads_dir / version / HEAD_FILE,
            created=meta.get("created", ""),
            metrics={k: float(v) for k, v in (meta.get("metrics") or {}).items()},
            parent=meta.get("parent"),
            status=meta.get("status", "candidate"),
            reason=meta.get("reason", ""),
            backbone_id=meta.get("backbone_id", ""),
            extra=dict(meta.get("extra") or {}),
        )

    def _check_head_file(self, version: str) -> None:
        path = self.heads_dir / version / HEAD_FILE
        try:
            read_head_metadata(path)
        except HeadLoadError as exc:
            raise RegistryError(f"refusing to serve head {version}: {exc}") from exc

    def _usable(self, version: str) -> bool:
        try:
            meta = self._read_meta(version)
            if meta.get("status") == "rejected":
                return False  # rejected since it served: never to be served again
            self._prove(version, meta.get("backbone_id"), None)
        except RegistryError:
            return False
        return True

    def _prove(self, version: str, backbone_id: str | None, shapes: BackboneShapes | None) -> None:
        from training.head_check import HeadCheckError, check_head_file

        try:
            check_head_file(self.heads_dir / version / HEAD_FILE, backbone_id or None, shapes)
        except (HeadCheckError, HeadLoadError) as exc:
            raise RegistryError(f"refusing to serve head {version}: {exc}") from exc

    def _check_same_backbone(self, version: str, meta: dict[str, Any], serving: str) -> None:
        try:
            current = self._read_meta(serving).get("backbone_id")
        except RegistryError:
            return  # the serving head's meta is gone: nothing to compare with
        if current and meta.get("backbone_id") != current:
            raise RegistryError(
                f"refusing to serve head {version}: it was trained for backbone "
                f"{meta.get('backbone_id')!r}, the serving head {serving} for {current!r} "
                "(promote with allow_backbone_change / --allow-backbone-change if the backends "
                "were switched to that backbone)"
            )

    def fallbacks(self) -> list[HeadVersion]:
        """Heads served before the current one, newest first (rejected ones left out): what a
        backend tries when the serving head will not load."""
        with self._locked(shared=True):
            current = self._serving_version()
            chain = [v for v in reversed(self._promotion_stack()) if v != current]
            heads = []
            for version in dict.fromkeys(chain):
                try:
                    meta = self._read_meta(version)
                except RegistryError:
                    continue
                if meta.get("status") != "rejected":
                    heads.append(self._from_meta(meta))
        return heads

    # ---- internals: pointer, history, Redis ------------------------------------------------
    def _serving_version(self) -> str | None:
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

    def _write_pointer(self, version: str | None, when: str) -> None:
        path = self.heads_dir / SERVING_FILE
        if version is None:
            path.unlink(missing_ok=True)
            _fsync_dir(self.heads_dir)
            return
        relative = Path(HEADS_DIR) / version / HEAD_FILE
        _write_json_atomic(path, {"version": version, "path": str(relative), "time": when})

    def _append_history(
        self,
        action: str,
        version: str | None,
        reason: str,
        previous: str | None = None,
        when: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "time": when or _now(),
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

    def _read_history(self) -> list[dict[str, Any]]:
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

    def _promotion_stack(self) -> list[str]:
        """Replay the history into the chain of served versions that rollback walks back."""
        stack: list[str] = []
        for entry in self._read_history():
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

    def _share(self, head: HeadVersion) -> None:
        """Put the head file in Redis too, for backends on machines without this MODEL_DIR."""
        if self.redis is None:
            return
        try:
            self.redis.set(self.blob_key(head.version), head.path.read_bytes())
        except Exception:
            logger.exception("could not copy head %s to Redis; only this MODEL_DIR has it",
                             head.version)  # fmt: skip

    def _publish(self, head: HeadVersion | None) -> None:
        """Tell every backend process; the files stay the truth if Redis is down."""
        if self.redis is None:
            return
        message = json.dumps(
            {"version": head.version, "path": str(head.path)}
            if head is not None
            else {"version": None, "path": None}
        )
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self.serving_key, message)
            pipe.publish(self.channel, message)
            pipe.execute()
        except Exception:
            logger.exception(
                "could not publish the serving head to Redis (%s); running backends pick it up "
                "when they next poll the registry", self.channel,
            )  # fmt: skip

    def _sweep_stale_temps(self) -> None:
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _compare(
    key: str,
    candidate: dict[str, float],
    serving: dict[str, float] | None,
    tolerance: float,
) -> tuple[bool, str]:
    """(candidate not worse than serving on ``key``, the comparison in words)."""
    new = _score(candidate, key)
    if serving is None:
        ok = not math.isnan(new)
        return ok, (
            f"{key} {new:.4f}, no serving head to compare with"
            + ("" if ok else f" (candidate has no valid {key})")
        )
    old = _score(serving, key)
    if math.isnan(new):
        ok = False
    elif math.isnan(old):
        ok = True
    else:
        ok = new >= old - tolerance
    relation = ">=" if ok else "<"
    return ok, f"{key} {new:.4f} {relation} serving {old:.4f} - tolerance {tolerance:g}"


def _score(metrics: dict[str, float], key: str) -> float:
    value = metrics.get(key)
    try:
        return float("nan") if value is None else float(value)
    except (TypeError, ValueError):
        return float("nan")


def _clean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metrics must map names to numbers: {exc}") from exc


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "no metrics"


def _check_version_name(version: str) -> None:
    if not _VERSION_RE.match(version):
        raise RegistryError(f"head version {version!r} is not usable as a folder name")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Temp file in the same folder, fsync, ``os.replace``, fsync the folder."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; backends may run as another user
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
