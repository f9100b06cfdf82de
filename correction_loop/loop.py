"""The correction loop inside a backend process: events → store → retrain → hot reload.

Wires the pieces of this package together: the event pump (webhook log → Redis), the retrain
scheduler, the head reloader, and, with the embedded Redis, an in-process retraining worker
that borrows this process's already loaded pipeline. The backend hands it :class:`LoopSettings`
(what the loop needs of its settings) and its model service (:class:`ServedModel`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsam.pipeline_cache import share_pipeline
from correction_loop.events import EventLog, EventPump
from correction_loop.fewshot import MemoryLimits, MemorySync
from correction_loop.import_export import corrections_from_tasks
from correction_loop.redis_conn import connect, release
from correction_loop.registry import ModelRegistry
from correction_loop.reloader import HeadReloader, ServedModel
from correction_loop.retrain import PATIENCE, WARM_EPOCHS
from correction_loop.scheduler import RetrainPolicy, RetrainScheduler
from correction_loop.store import CorrectionStore
from correction_loop.worker import ThreadWorker, run_in_thread
from labelstudio.fetch import ImageFetcher
from labelstudio.projects import project_id
from labelstudio.settings import FetchSettings, api_key_from_env

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs to know; nothing secret (job arguments are kept in Redis)."""

    model_dir: Path
    preset: str
    #: What every process of this deployment builds its pipeline with (backend and worker).
    pipeline_overrides: dict[str, Any] = field(default_factory=dict)
    #: How retrain jobs fetch the corrected images; workers add their own API key.
    fetch: FetchSettings = field(default_factory=FetchSettings)
    #: ``REDIS_URL``; an embedded server under ``model_dir`` when unset.
    redis_url: str | None = None
    category_key: str = "category"
    default_category: str | None = None
    retrain_every: int = 20
    retrain_interval: float = 0.0
    retrain_epochs: int = 10
    retrain_holdout: float = 0.2
    retrain_patience: int = PATIENCE  # 0: no early stopping
    retrain_warm_epochs: int = WARM_EPOCHS  # a warm start's epochs at most
    retrain_promote_early: bool = True  # serve the first better epoch while training goes on
    retrain_heartbeat: float = 30.0
    #: Extra labelled datasets mixed into every retrain (``mvtec:PATH``...).
    base_data: tuple[str, ...] = ()
    #: Run retraining jobs inside this process (default: only with the embedded Redis).
    inprocess_worker: bool | None = None
    reload_poll: float = 5.0
    #: Few-shot normal memory bounds per category (``clipsam.fewshot``); 0 images: off.
    fewshot_images: int = MemoryLimits.max_images
    fewshot_patches: int = MemoryLimits.max_patches


class CorrectionLoop:
    def __init__(
        self,
        settings: LoopSettings,
        model: ServedModel,
        events: EventLog,
        fetcher: ImageFetcher | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.connection = connect(settings.redis_url, settings.model_dir)
        self.store = CorrectionStore(self.connection)
        self.registry = ModelRegistry(settings.model_dir, self.connection)
        self.scheduler = RetrainScheduler(
            self.connection,
            self.store,
            RetrainPolicy(
                every=settings.retrain_every,
                interval=settings.retrain_interval,
                heartbeat=settings.retrain_heartbeat,
            ),
            job_kwargs=self._job_kwargs(),
        )
        self.pump = EventPump(events, self.apply)
        self.reloader = HeadReloader(model, self.registry, poll=settings.reload_poll)
        self.memory: MemorySync | None = None
        if settings.fewshot_images > 0:  # good images join their category's normal memory
            self.memory = MemorySync(
                self.store,
                model,
                settings.model_dir,
                fetcher or ImageFetcher(settings.fetch, api_key_from_env()),
                MemoryLimits(settings.fewshot_images, settings.fewshot_patches),
            )
        self.worker: ThreadWorker | None = None
        self._worker_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def apply(self, payload: dict[str, Any]) -> None:
        """One webhook event into the store, then let the scheduler decide."""
        action = str(payload.get("action", ""))
        annotation = payload.get("annotation")
        project = project_id(
            payload.get("project"),
            annotation.get("project") if isinstance(annotation, dict) else None,
        )
        if action == "START_TRAINING" and payload.get("tasks") is not None:
            outcome = self._import_tasks(payload, project)
        else:
            outcome = self.store.apply_event(
                payload,
                category_key=self.settings.category_key,
                default_category=self.settings.default_category,
            )
        logger.info("event %s → %s (project %s)", action, outcome, project)
        if outcome != "unchanged":
            if self.memory is not None:
                self.memory.wake()  # good images join their memory in the background
            self.scheduler.on_event(action, project)

    def _import_tasks(self, payload: dict[str, Any], project_id: str | None) -> str:
        """Label Studio's legacy ``/train`` sends every annotated task: upsert them first."""
        if project_id is None:
            raise ValueError("training request names no project")
        project = payload.get("project")
        config = project.get("label_config") if isinstance(project, dict) else None
        corrections = corrections_from_tasks(
            payload["tasks"], project_id, config, self.settings.category_key,
            self.settings.default_category, source="/train request",
        )  # fmt: skip
        new = self.store.upsert_many(corrections)
        logger.info("/train: %d annotation(s), %d new or changed", len(corrections), new)
        return "imported"

    def start(self) -> None:
        self.pump.start()
        self.reloader.start()
        if self.memory is not None:
            self.memory.start()
        period = min(30.0, self.settings.retrain_interval or 30.0)
        threading.Thread(
            target=self.scheduler.run_interval_loop,
            args=(period,),
            name="retrain-tick",
            daemon=True,
        ).start()
        inprocess = self.settings.inprocess_worker
        if inprocess or (inprocess is None and not self.settings.redis_url):
            threading.Thread(target=self._start_worker, name="worker-start", daemon=True).start()

    def stop(self) -> None:
        """Stop every thread, then let go of Redis (an embedded server stops here, saving)."""
        self._stopping.set()
        self.pump.stop()
        self.reloader.stop()
        if self.memory is not None:
            self.memory.stop()
        self.scheduler.stop()
        if self.worker is not None:
            self.worker.stop()
            if self._worker_thread is not None:
                self._worker_thread.join(timeout=5)
        release(self.connection)

    def _start_worker(self) -> None:
        """Once the model is loaded, lend it to retraining jobs and start the worker."""
        try:
            pipeline = self.model.wait(timeout=24 * 3600)
        except Exception as exc:
            logger.error("in-process worker not started: %s", exc)
            return
        kwargs = self.scheduler.job_kwargs
        share_pipeline(kwargs["preset"], kwargs["pipeline_overrides"], pipeline)
        if not self._stopping.is_set():  # the backend may have shut down while loading
            self.worker, self._worker_thread = run_in_thread(self.connection)

    def _job_kwargs(self) -> dict[str, Any]:
        """What a retrain job needs; no secrets (jobs sit in Redis): workers read their own env."""
        s = self.settings
        return {
            "model_dir": str(s.model_dir),
            "preset": s.preset,
            "pipeline_overrides": dict(s.pipeline_overrides),
            "settings": s.fetch.to_job(),  # nothing secret: workers read their own API key
            "epochs": s.retrain_epochs,
            "holdout": s.retrain_holdout,
            "patience": s.retrain_patience or None,
            "warm_epochs": s.retrain_warm_epochs,
            "promote_early": s.retrain_promote_early,
            "base_data": list(s.base_data) or None,
            "heartbeat_period": s.retrain_heartbeat,  # the scheduler waits two of these
        }
