"""Versioned heads under ``MODEL_DIR/heads``: register, decide, promote, reject, roll back.

Only the small head is ever retrained, so every trained head is kept as a version and exactly
one (or none: the training-free head) is served. Three pieces, one module each:

- the promotion rule (:mod:`correction_loop.promotion`): which candidate may serve;
- the durable files (:mod:`correction_loop.head_files`): versions, the ``SERVING`` pointer
  (which only ever names a head already on disk) and the history, each replaced atomically;
- publishing (:mod:`correction_loop.publish`): with a Redis client, promotions and rollbacks are
  announced to every backend process.

:class:`ModelRegistry` puts them together, under one lock per ``heads`` folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsam.atomic import atomic_write_json, fsync_path
from clipsam.heads import HeadLoadError, save_head
from correction_loop import keys, promotion
from correction_loop.head_files import (
    HEAD_FILE,
    HEADS_DIR,
    META_FILE,
    SERVING_FILE,
    HeadFiles,
    HeadVersion,
    RegistryError,
    UnknownVersionError,
    check_version_name,
    now,
)
from correction_loop.publish import HeadPublisher

if TYPE_CHECKING:
    import redis

    from clipsam.heads import AnomalyHead
    from training.head_check import BackboneShapes

logger = logging.getLogger(__name__)


class ModelRegistry:
    """Heads on disk as versions, one of them served; safe to share between processes."""

    def __init__(
        self, model_dir: str | Path, redis: redis.Redis | None = None, prefix: str = keys.PREFIX
    ) -> None:
        self.model_dir = Path(model_dir).absolute()
        self.heads_dir = self.model_dir / HEADS_DIR
        self.redis = redis
        self.prefix = prefix
        self.files = HeadFiles(self.heads_dir)
        self.publisher = HeadPublisher(redis, prefix)

    # ---- Redis names ---------------------------------------------------------------------
    @property
    def serving_key(self) -> str:
        return self.publisher.serving_key

    @property
    def channel(self) -> str:
        return self.publisher.channel

    def blob_key(self, version: str) -> str:
        return self.publisher.blob_key(version)

    # ---- reading -------------------------------------------------------------------------
    def versions(self) -> list[HeadVersion]:
        """Every registered head, oldest first."""
        with self.files.locked(shared=True):
            metas = self.files.all_metas()
        return [self.files.from_meta(m) for m in metas]

    def get(self, version: str) -> HeadVersion:
        with self.files.locked(shared=True):
            return self.files.from_meta(self.files.read_meta(version))

    def serving(self) -> HeadVersion | None:
        """The served head, or None when the training-free head serves."""
        with self.files.locked(shared=True):
            version = self.files.serving_version()
            if version is None:
                return None
            try:
                return self.files.from_meta(self.files.read_meta(version))
            except UnknownVersionError:
                logger.error(
                    "%s names head %s, which is gone; serving the training-free head",
                    self.heads_dir / SERVING_FILE, version,
                )  # fmt: skip
                return None

    def history(self) -> list[dict[str, Any]]:
        """Every action so far, oldest first: ``{time, action, version, reason, ...}``."""
        with self.files.locked(shared=True):
            return self.files.read_history()

    def fallbacks(self) -> list[HeadVersion]:
        """Heads served before the current one, newest first (rejected ones left out): what a
        backend tries when the serving head will not load."""
        with self.files.locked(shared=True):
            current = self.files.serving_version()
            chain = [v for v in reversed(self.files.promotion_stack()) if v != current]
            heads = []
            for version in dict.fromkeys(chain):
                try:
                    meta = self.files.read_meta(version)
                except RegistryError:
                    continue
                if meta.get("status") != "rejected":
                    heads.append(self.files.from_meta(meta))
        return heads

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
        """The promotion rule, :func:`correction_loop.promotion.decide`: ``(ok, reason)``."""
        return promotion.decide(
            candidate, candidate_metrics, serving_metrics, key, tolerance, region_key,
            region_tolerance,
        )  # fmt: skip

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
            check_version_name(version)
            with self.files.locked():
                self.files.sweep_stale_temps()
                target = self.heads_dir / version
                if target.exists():
                    if not self.files.meta_path(version).is_file():
                        raise RegistryError(f"{target} exists without {META_FILE}; move it away")
                    existing = self.files.from_meta(self.files.read_meta(version))
                    logger.info("head %s is already registered (%s)", version, existing.status)
                    return existing
                meta = {
                    "version": version,
                    "seq": self.files.next_seq(),
                    "created": now(),
                    "metrics": clean_metrics,
                    "parent": parent,
                    "status": "candidate",
                    "reason": "registered",
                    "backbone_id": head.backbone_id,
                    "kind": head.kind,
                    "extra": dict(extra or {}),
                }
                atomic_write_json(staging / META_FILE, meta)
                os.replace(staging, target)
                fsync_path(self.heads_dir)
                self.files.append_history("register", version, _metrics_text(clean_metrics))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("registered head %s (parent %s): %s", version, parent, clean_metrics)
        return self.files.from_meta(meta)

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
        with self.files.locked():
            meta = self.files.read_meta(version)
            self.files.check_head_file(version)
            previous = self.files.serving_version()
            if previous not in (None, version) and not allow_backbone_change:
                self._check_same_backbone(version, meta, previous)
            when = now()
            self.files.write_pointer(version, when)  # the decisive step: old or new, never partial
            meta.update(status="promoted", reason=reason)
            self.files.write_meta(meta)
            if previous is not None and previous != version:
                self.files.set_status(previous, "retired", f"replaced by {version}")
            self.files.append_history("promote", version, reason, previous=previous, when=when)
            promoted = self.files.from_meta(meta)
            self.publisher.share(promoted)  # before the announcement; only serving heads need it
            self.publisher.publish(promoted)
        logger.info("promoted head %s (was %s): %s", version, previous or "training-free", reason)
        return promoted

    def reject(self, version: str, reason: str) -> HeadVersion:
        """Keep ``version`` on disk for inspection, but mark it as never to be served."""
        with self.files.locked():
            meta = self.files.read_meta(version)
            if self.files.serving_version() == version:
                raise RegistryError(
                    f"head {version} is serving; roll back or promote another head before "
                    "rejecting it"
                )
            meta.update(status="rejected", reason=reason)
            self.files.write_meta(meta)
            self.files.append_history("reject", version, reason)
        logger.info("rejected head %s: %s", version, reason)
        return self.files.from_meta(meta)

    def rollback(self) -> HeadVersion | None:
        """Serve the head promoted before the current one; None → the training-free head.

        Each rollback undoes one promotion (promote A, B, C; rollback → B → A → None).
        Versions deleted from disk or rejected since are skipped. With nothing served, nothing
        changes.
        """
        with self.files.locked():
            current = self.files.serving_version()
            if current is None:
                logger.info("nothing to roll back: the training-free head is serving")
                return None
            stack = self.files.promotion_stack()
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
            when = now()
            self.files.write_pointer(target, when)
            self.files.set_status(current, "retired", f"rolled back to {target or 'training-free'}")
            restored = None
            if target is not None:
                restored = self.files.set_status(
                    target, "promoted", f"restored by rollback of {current}"
                )
            self.files.append_history(
                "rollback", target, f"rolled back {current}", previous=current, when=when
            )
            self.publisher.publish(restored)
        logger.info("rolled back head %s; now serving %s", current, target or "training-free")
        return restored

    # ---- internals: proving a head ---------------------------------------------------------
    def _usable(self, version: str) -> bool:
        try:
            meta = self.files.read_meta(version)
            if meta.get("status") == "rejected":
                return False  # rejected since it served: never to be served again
            self._prove(version, meta.get("backbone_id"), None)
        except RegistryError:
            return False
        return True

    def _prove(self, version: str, backbone_id: str | None, shapes: BackboneShapes | None) -> None:
        from training.head_check import HeadCheckError, check_head_file

        try:
            check_head_file(self.files.head_path(version), backbone_id or None, shapes)
        except (HeadCheckError, HeadLoadError) as exc:
            raise RegistryError(f"refusing to serve head {version}: {exc}") from exc

    def _check_same_backbone(self, version: str, meta: dict[str, Any], serving: str) -> None:
        try:
            current = self.files.read_meta(serving).get("backbone_id")
        except RegistryError:
            return  # the serving head's meta is gone: nothing to compare with
        if current and meta.get("backbone_id") != current:
            raise RegistryError(
                f"refusing to serve head {version}: it was trained for backbone "
                f"{meta.get('backbone_id')!r}, the serving head {serving} for {current!r} "
                "(promote with allow_backbone_change / --allow-backbone-change if the backends "
                "were switched to that backbone)"
            )


def _clean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in metrics.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metrics must map names to numbers: {exc}") from exc


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "no metrics"
