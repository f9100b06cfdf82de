"""Good images join their category's normal memory, in the background, without a retrain.

The corrections store (Redis) stays the truth: an annotation without regions, not cancelled, is
a good reference of its category. :class:`MemorySync` keeps ``MODEL_DIR/fewshot/<backbone>/``
equal to that set and the serving pipeline's memories equal to the files:

``refs/<annotation id>.safetensors``
    the reference's CLIP stage tokens (computed once: the image is fetched like a retrain
    fetches it, through ``MODEL_DIR/images``), with its category and image in the metadata.
``memory/<category digest>.safetensors``
    the category's memory (:func:`clipsam.fewshot.build_memory`, bounded), rebuilt whenever
    its set of references changes: a deleted annotation, or one updated to have regions, drops
    out exactly.

Everything runs in one thread, woken by each stored webhook event and every ``poll`` seconds,
never in the webhook's request path. A reference whose image cannot be fetched is logged and
retried later; Redis down keeps the memories served from the files. Another process (a restart,
a second backend on the same ``MODEL_DIR``) loads the memory files it did not compute. Files
live under the backbone's own folder, and a memory of another backbone is refused on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from clipsam import Pipeline
from clipsam.atomic import atomic_path
from clipsam.fewshot import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PATCHES,
    MemoryMismatchError,
    build_memory,
    category_key,
    load_memory,
    save_memory,
)
from clipsam.images import image_hash, load_image
from clipsam.log_throttle import ThrottledWarning
from correction_loop.corrections import Correction
from correction_loop.image_cache import cached_fetch
from correction_loop.reloader import ServedModel
from correction_loop.store import CorrectionStore
from labelstudio.fetch import ImageFetcher

logger = logging.getLogger(__name__)

#: Seconds before a reference whose image failed is tried again.
RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class MemoryLimits:
    """The bounds of every category's memory (``CLIPSAM_FEWSHOT_IMAGES``/``_PATCHES``)."""

    max_images: int = DEFAULT_MAX_IMAGES
    max_patches: int = DEFAULT_MAX_PATCHES


def backbone_folder(model_dir: Path, backbone_id: str) -> Path:
    """``MODEL_DIR/fewshot/<backbone digest>``: each backbone's references and memories."""
    digest = hashlib.sha256(backbone_id.encode()).hexdigest()[:16]
    return Path(model_dir) / "fewshot" / digest


def is_reference(correction: Correction) -> bool:
    """A person looked and found nothing: a good image of its category."""
    return not correction.has_defect and not correction.was_cancelled


class MemorySync:
    def __init__(
        self,
        store: CorrectionStore,
        model: ServedModel,
        model_dir: Path,
        fetcher: ImageFetcher,
        limits: MemoryLimits = MemoryLimits(),
        poll: float = 30.0,
        rescan: float = 600.0,
    ) -> None:
        self.store = store
        self.model = model
        self.model_dir = Path(model_dir)
        self.fetcher = fetcher
        self.limits = limits
        self.poll = poll
        #: Seconds after which a pass reads every correction again even though the store's
        #: change stream says nothing changed (a safety net; between, passes read one id).
        self.rescan = rescan
        #: (folder, the store's last change id) of the last full pass, and when it ran.
        self._scanned: tuple[Path, str] | None = None
        self._scanned_at = -math.inf
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: dict[int, float] = {}  # annotation id → when to try again
        self._loaded: dict[str, tuple[int, int]] = {}  # memory file name → (mtime_ns, size)
        self._outage = ThrottledWarning(logger)
        #: Passes completed (tests wait on it).
        self.passes = 0

    # -- thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fewshot-memory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """A correction changed: sync soon (called from the event pump, returns at once)."""
        self._wake.set()

    def _loop(self) -> None:
        try:
            self.model.wait(timeout=24 * 3600)  # features need the backbone
        except Exception as exc:
            logger.error("normal memory not kept: %s", exc)
            return
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # the thread must survive anything one pass meets
                logger.exception("normal memory sync failed; retrying in %.0f s", self.poll)
            self._wake.wait(self.poll)
            self._wake.clear()

    # -- one pass -------------------------------------------------------------------------------
    def sync(self) -> bool:
        """Bring references, memory files and the served memories in line; False before the
        model is loaded (nothing to compute features with)."""
        if not self.model.ready:
            return False
        pipeline = self.model.wait(0)
        folder = backbone_folder(self.model_dir, pipeline.clip.backbone_id)
        try:
            change = self.store.last_change()  # before the scan: a write during it rescans
            wanted = None
            if not self._up_to_date(folder, change):
                wanted = {
                    c.annotation_id: c
                    for project in self.store.projects()
                    for c in self.store.list_project(project)
                    if is_reference(c)
                }
        except redis.exceptions.RedisError as exc:
            self._outage.warning("normal memory: Redis unavailable (%s); serving the files", exc)
        else:
            self._outage.recovered("normal memory: Redis is back")
            if wanted is not None:
                self._update_files(pipeline, folder, wanted)
                self._scanned, self._scanned_at = (folder, change), time.monotonic()
        self._serve(pipeline, folder)
        self.passes += 1
        return True

    def _up_to_date(self, folder: Path, change: str) -> bool:
        """Whether the last full pass saw this very state: same backbone folder, no write to
        the store since, no failed image due for a retry, and not yet time for a rescan.
        Reading every correction (masks included) each ``poll`` seconds would cost a large
        project megabytes per pass for nothing."""
        now = time.monotonic()
        return (
            self._scanned == (folder, change)
            and now - self._scanned_at < self.rescan
            and not any(when <= now for when in self._failed.values())
        )

    def _update_files(
        self, pipeline: Pipeline, folder: Path, wanted: dict[int, Correction]
    ) -> None:
        refs, memories = folder / "refs", folder / "memory"
        refs.mkdir(parents=True, exist_ok=True)
        memories.mkdir(parents=True, exist_ok=True)
        have = _read_refs(refs)
        for aid, meta in list(have.items()):
            correction = wanted.get(aid)
            if correction is None or _ref_changed(meta, correction):
                (refs / f"{aid}.safetensors").unlink(missing_ok=True)
                del have[aid]
                logger.info("normal memory: annotation %d left %r", aid, meta.get("category"))
        now = time.monotonic()
        for aid, correction in sorted(wanted.items()):
            if aid in have or self._failed.get(aid, 0.0) > now:
                continue
            try:
                have[aid] = self._add_reference(pipeline, refs, correction)
            except Exception as exc:  # image gone, fetch refused: the correction stays stored
                self._failed[aid] = now + RETRY_SECONDS
                logger.warning(
                    "normal memory: annotation %d (task %d) not added, retry in %.0f s: %s",
                    aid, correction.task_id, RETRY_SECONDS, exc,
                )  # fmt: skip
            else:
                self._failed.pop(aid, None)
        self._rebuild(pipeline, refs, memories, have)

    def _add_reference(
        self, pipeline: Pipeline, refs: Path, correction: Correction
    ) -> dict[str, Any]:
        """Write the reference's file; its metadata."""
        data = cached_fetch(
            correction.image, correction.task_id, self.fetcher, self.model_dir / "images"
        )
        image = load_image(data)
        [features] = pipeline.clip_features([image], [image_hash(image)])
        meta = {
            "annotation_id": correction.annotation_id,
            "category": category_key(correction.category),
            "image": correction.image,
            "backbone_id": pipeline.clip.backbone_id,
        }
        stages = features["stages"].detach().to("cpu", torch.float16).contiguous()
        with atomic_path(refs / f"{correction.annotation_id}.safetensors") as temp:
            save_file({"stages": stages}, str(temp), metadata={"clipsam": json.dumps(meta)})
        logger.info(
            "normal memory: annotation %d joins %r", correction.annotation_id, meta["category"]
        )
        return meta

    def _rebuild(
        self, pipeline: Pipeline, refs: Path, memories: Path, have: dict[int, dict[str, Any]]
    ) -> None:
        """Rebuild each category's memory whose references (``have``: the files under
        ``refs`` and their metadata) changed; drop emptied ones."""
        by_category: dict[str, list[int]] = {}
        for aid, meta in sorted(have.items()):
            by_category.setdefault(str(meta["category"]), []).append(aid)
        for path in memories.glob("*.safetensors"):
            category = _memory_category(path)
            if category is None or category not in by_category:
                path.unlink(missing_ok=True)
                logger.info("normal memory of %r removed (no good references left)", category)
        backbone = pipeline.clip.backbone_id
        for category, aids in by_category.items():
            path = memories / memory_file_name(category)
            wanted = tuple(str(a) for a in aids[-self.limits.max_images :])
            if _memory_sources(path) == wanted:
                continue
            references = [(str(a), _read_stages(refs / f"{a}.safetensors")) for a in aids]
            memory = build_memory(
                backbone, category, references, self.limits.max_patches, self.limits.max_images
            )
            save_memory(memory, path)
            logger.info(
                "normal memory of %r rebuilt: %d image(s), %d patches per stage",
                category, len(memory.sources), memory.patches,
            )  # fmt: skip

    def _serve(self, pipeline: Pipeline, folder: Path) -> None:
        """Serve what the memory files say (also those another process wrote)."""
        files = {p.name: p for p in (folder / "memory").glob("*.safetensors")}
        for name in list(self._loaded):
            if name not in files:
                del self._loaded[name]
        served = set()
        for name, path in files.items():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            category = _memory_category(path)
            if category is None:
                continue
            served.add(category)
            if self._loaded.get(name) == stamp and pipeline.memories.get(category) is not None:
                continue
            try:
                memory = load_memory(path, pipeline.clip.backbone_id)
            except MemoryMismatchError as exc:
                logger.error("normal memory %s not served: %s", path, exc)
                continue
            pipeline.memories.put(memory.to(pipeline.device))
            self._loaded[name] = stamp
            logger.info(
                "serving the normal memory of %r (%d images)", category, len(memory.sources)
            )
        for category in pipeline.memories.categories():
            if category not in served:
                pipeline.memories.remove(category)
                logger.info("normal memory of %r no longer served", category)


def memory_file_name(category: str) -> str:
    return hashlib.sha256(category.encode()).hexdigest()[:24] + ".safetensors"


def _metadata(path: Path) -> dict[str, Any] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("clipsam", "{}"))
    except (SafetensorError, OSError, ValueError) as exc:
        logger.warning("normal memory: %s unreadable (%s); ignored", path, exc)
        return None
    return meta if isinstance(meta, dict) else None


def _read_refs(refs: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for path in refs.glob("*.safetensors"):
        meta = _metadata(path)
        if meta is None or not path.stem.isdigit():
            path.unlink(missing_ok=True)  # a torn or foreign file: recomputed if still wanted
            continue
        out[int(path.stem)] = meta
    return out


def _read_stages(path: Path) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("stages").float()


def _ref_changed(meta: dict[str, Any], correction: Correction) -> bool:
    return (
        meta.get("category") != category_key(correction.category)
        or meta.get("image") != correction.image
    )


def _memory_category(path: Path) -> str | None:
    meta = _metadata(path)
    return None if meta is None else str(meta.get("category", ""))


def _memory_sources(path: Path) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    meta = _metadata(path)
    return None if meta is None else tuple(str(s) for s in meta.get("sources", []))
