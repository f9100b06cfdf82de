"""The model, loaded once per process in the background, so /health and /setup answer at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from backend.settings import Settings
from clipsam import Pipeline, load_pipeline
from clipsam.heads import read_head_metadata

logger = logging.getLogger(__name__)


class ModelNotReady(RuntimeError):
    """The pipeline is still loading, or failed to load (``error`` says why)."""


def pipeline_overrides(settings: Settings) -> dict[str, object]:
    """What every process of this deployment builds its pipeline with (backend and worker).

    Frozen features go to ``MODEL_DIR/features``, shared by processes: a retrain reuses the
    features that predictions computed, and a restarted backend starts warm.
    """
    overrides: dict[str, object] = {
        "device": settings.device,
        "cache_dir": str(settings.model_dir / "features"),
    }
    overrides.update(settings.pipeline_overrides)
    return overrides


def model_version(preset: str, head_version: str) -> str:
    """What Label Studio sees: a new head gives a new string, so tasks get re-predicted."""
    return f"clipsam-{preset}-{head_version}"


class ModelService:
    def __init__(self, settings: Settings, loader: Callable[[], Pipeline] | None = None) -> None:
        self.settings = settings
        self._loader = loader or self._load
        self._pipeline: Pipeline | None = None
        self._ready = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self.error: str | None = None
        self._expected_head = self._head_version_on_disk()

    def start(self) -> None:
        """Begin loading in a daemon thread (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._run, name="model-loader", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._pipeline is not None

    def wait(self, timeout: float) -> Pipeline:
        self.start()
        self._ready.wait(timeout)
        if self._pipeline is None:
            raise ModelNotReady(self.error or f"model still loading after {timeout:.0f} s; retry")
        return self._pipeline

    @property
    def model_version(self) -> str:
        head = self._pipeline.head.version if self._pipeline is not None else self._expected_head
        return model_version(self.settings.preset, head)

    def _run(self) -> None:
        try:
            pipeline = self._loader()
        except Exception as exc:  # surfaced through /health and 503s, not a dead thread
            logger.exception("model failed to load")
            self.error = f"model failed to load: {exc}"
        else:
            self._pipeline = pipeline
            logger.info(
                "model ready: %s", model_version(self.settings.preset, pipeline.head.version)
            )
        finally:
            self._ready.set()

    def _load(self) -> Pipeline:
        overrides: dict[str, object] = pipeline_overrides(self.settings)
        if self.settings.head_path is not None:
            overrides["head_path"] = str(self.settings.head_path)
        return load_pipeline(self.settings.preset, **overrides)

    def _head_version_on_disk(self) -> str:
        """The version /setup can report before the model has loaded."""
        if self.settings.head_path is None:
            return "zero-shot"
        try:
            return str(read_head_metadata(self.settings.head_path)["version"])
        except ValueError as exc:
            self.error = str(exc)
            return "unavailable"
