"""The model, loaded once per process in the background, so /health and /setup answer at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from backend.settings import Settings
from clipsam import Pipeline, load_pipeline
from clipsam.heads import load_head, read_head_metadata
from labelstudio.predictions import model_version
from training.head_check import check_head, pipeline_shapes

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


class ModelService:
    """The pipeline, and which head it really serves.

    The backbones load first; the head (``settings.head_path``: the registry's serving head, or
    ``CLIPSAM_HEAD``) is installed after, once it has proved itself on them
    (:func:`training.head_check.check_head`). A head that does not load or fails the check
    leaves the backend up on the first good head of ``fallbacks`` (the heads served before it,
    newest first) or the training-free head; ``fallback`` says so, and /health shows it.
    """

    def __init__(
        self,
        settings: Settings,
        loader: Callable[[], Pipeline] | None = None,
        fallbacks: Callable[[], list[Path]] | None = None,
    ) -> None:
        self.settings = settings
        self._loader = loader or self._load
        self._fallbacks = fallbacks or list
        self._pipeline: Pipeline | None = None
        self._ready = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self.error: str | None = None
        #: Why the wanted head is not the one served (None: it is, or none was wanted).
        self.fallback: str | None = None
        #: The version of a head that failed to load here, so the reloader does not retry it.
        self.rejected_head: str | None = None
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

    @property
    def loaded_head(self) -> str | None:
        return self._pipeline.head.version if self._pipeline is not None else None

    def _run(self) -> None:
        try:
            pipeline = self._loader()
            self._install_head(pipeline)
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
        """The backbones (and the training-free head); :meth:`_install_head` adds the head."""
        return load_pipeline(
            self.settings.preset,
            weight_paths=self.settings.weight_paths,
            **pipeline_overrides(self.settings),
        )

    def _install_head(self, pipeline: Pipeline) -> None:
        wanted = self.settings.head_path
        if wanted is None:
            return
        shapes = pipeline_shapes(pipeline)
        for index, path in enumerate([wanted, *self._fallbacks()]):
            try:
                head = load_head(path, pipeline.clip.backbone_id)
                check_head(head, shapes)
            except Exception as exc:
                if index == 0:
                    self.rejected_head = _version_of(path)
                    self.fallback = f"head {self.rejected_head} not served: {exc}"
                logger.error("head %s not served: %s", path, exc)
                continue
            pipeline.set_head(head)
            if index:  # the wanted head (index 0) failed and set ``fallback``
                logger.error("%s; serving the last good head %s", self.fallback, head.version)
                self.fallback = f"{self.fallback}; serving the last good head {head.version}"
            return
        pipeline.set_head(pipeline.new_head(kind="none"))
        self.fallback = f"{self.fallback}; serving the training-free head"
        logger.error("%s", self.fallback)

    def _head_version_on_disk(self) -> str:
        """The version /setup can report before the model has loaded."""
        if self.settings.head_path is None:
            return "zero-shot"
        try:
            return str(read_head_metadata(self.settings.head_path)["version"])
        except ValueError:
            return "unavailable"  # the loader falls back and says why


def _version_of(path: Path) -> str:
    try:
        return str(read_head_metadata(path)["version"])
    except ValueError:
        return path.parent.name if path.name == "head.safetensors" else path.name
