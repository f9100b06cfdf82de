"""The HTTP surface Label Studio talks to: /health, /setup, /predict, /webhook, /versions.

``create_app`` builds one FastAPI app per process; the model loads in the background at start-up
(never per request), so /health and /setup answer at once while it loads. The control plane
(/health, /setup, /webhook, /versions, /metrics) is async and does its little blocking work
(an fsync, a registry read) in its own small thread pool; /predict runs in another, behind
:mod:`backend.admission`, so no number of slow predictions can make the control plane wait.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field

from backend import log_redact, metrics
from backend.admission import PredictGate, RateLimiter
from backend.interactive import InteractivePredictor
from backend.limits import RequestLimits
from backend.model import ModelNotReady, ModelService, pipeline_overrides
from backend.predictor import TaskPredictor
from backend.settings import Settings
from clipsam.log_throttle import ThrottledWarning
from correction_loop.events import EventLog
from correction_loop.head_files import HeadVersion
from correction_loop.loop import CorrectionLoop, LoopSettings
from correction_loop.registry import ModelRegistry
from labelstudio.fetch import ImageFetcher
from labelstudio.interactive import find_context
from labelstudio.label_config import LabelConfigError, LabelSpec, parse_label_config
from labelstudio.predictions import model_version
from labelstudio.projects import project_id

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Threads for the control plane's blocking bits (fsync, registry reads); never predictions.
CONTROL_THREADS = 8

#: Webhook actions this backend keeps (corrections and training requests); others get a 200.
STORED_ACTIONS = frozenset(
    {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED",
     "START_TRAINING"}
)  # fmt: skip


class TrainRequest(BaseModel):
    """Legacy ``/train``: every annotated task of the project, as in a JSON export."""

    model_config = ConfigDict(extra="allow")
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    project: str | int | dict[str, Any]
    label_config: str | None = None


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    project: str | None = None
    label_schema: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(min_length=1)
    project: str | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class WebhookEvent(BaseModel):
    model_config = ConfigDict(extra="allow")
    action: str


def create_app(settings: Settings | None = None, model: ModelService | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    log_redact.install()  # ?secret= never reaches the access log
    events = EventLog(settings.model_dir)
    serving = _serving_head(settings)
    if settings.head_path is None and serving is not None:
        settings = dataclasses.replace(settings, head_path=serving.path)  # the promoted head
    model = model or ModelService(settings, fallbacks=lambda: _fallback_heads(settings))
    fetcher = ImageFetcher(settings.fetch, settings.label_studio_api_key)
    predictor = TaskPredictor(settings, model, fetcher)
    interactive = InteractivePredictor(settings, model, fetcher, predictor.pipeline_lock)
    loop = (
        CorrectionLoop(loop_settings(settings), model, events, fetcher)
        if settings.corrections
        else None
    )
    if loop is not None:
        loop.reloader.registry_version = serving.version if serving is not None else None
    project_configs: dict[str | None, str] = {}  # by project id (None: a project without one)

    gate = PredictGate(settings.predict_concurrency or settings.threads, settings.predict_queue)
    rate = RateLimiter(settings.predict_rate, settings.predict_burst)
    control: list[anyio.CapacityLimiter] = []

    async def offload(func: Callable[..., T], *args: Any) -> T:
        """Blocking control-plane work, in a pool that predictions never occupy."""
        if not control:
            control.append(anyio.CapacityLimiter(CONTROL_THREADS))
        return await anyio.to_thread.run_sync(func, *args, limiter=control[0])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(2, settings.threads)
        model.start()
        if loop is not None:
            loop.start()
        yield
        if loop is not None:
            loop.stop()
        predictor.close()
        fetcher.close()

    app = FastAPI(title="ClipSAM ML backend", version="1.0", lifespan=lifespan)
    app.state.settings, app.state.model, app.state.events = settings, model, events
    app.state.loop = loop

    app.add_middleware(
        RequestLimits,
        max_body=settings.max_request_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_url_bytes=settings.max_url_bytes,
    )

    metrics_registry = metrics.install(app, settings, model, loop, STORED_ACTIONS)  # outermost

    @app.get("/")
    @app.get("/health")
    async def health() -> dict[str, Any]:
        body = {
            "status": "UP",
            "model_class": "ClipSAM",
            "model_version": model.model_version,
            "ready": model.ready,
        }
        if model.error:
            body["error"] = model.error
        registry = loop.reloader.registry_version if loop is not None else None
        if loop is None and serving is not None:
            registry = serving.version
        body["head"] = {
            "loaded": model.loaded_head,  # what really answers /predict
            "registry": registry,  # what the registry names as serving (None: training-free)
            "fallback": model.fallback,  # why they differ, when they do
        }
        return body

    @app.post("/setup", dependencies=[Depends(require_auth)])
    async def setup(request: SetupRequest) -> dict[str, str]:
        if request.label_schema:
            await offload(_spec, request.label_schema, settings)  # refuse unusable configs
            if request.project:
                project_configs[project_id(request.project)] = request.label_schema
        return {"model_version": model.model_version}

    @app.post("/predict", dependencies=[Depends(require_auth)])
    async def predict(request: PredictRequest, http: Request) -> dict[str, Any]:
        rate.check(http.client.host if http.client else "unknown")  # 429 over the rate
        config = request.label_config or project_configs.get(project_id(request.project))
        if not config:
            raise HTTPException(422, "no label_config in the request and none from /setup")
        context = find_context(request.params, request.model_extra)  # a smart tool's click
        with gate.admit():  # 503 when the queue is full
            if context is not None:
                return await anyio.to_thread.run_sync(
                    interactive.predict, request.tasks, context, config, limiter=gate.limiter
                )
            return await anyio.to_thread.run_sync(
                _predict, predictor, request.tasks, config, settings, limiter=gate.limiter
            )

    @app.post("/webhook", dependencies=[Depends(require_webhook_auth)])
    async def webhook(event: WebhookEvent) -> dict[str, str]:
        if event.action not in STORED_ACTIONS:
            logger.debug("webhook %s ignored", event.action)
            metrics.webhook_event(metrics.OTHER)
            return {"status": "ignored"}
        await offload(store_event, events, event.action, event.model_dump(mode="json"))
        return {"status": "ok"}

    @app.post("/train", dependencies=[Depends(require_auth)])
    async def train(request: TrainRequest) -> dict[str, str]:
        """Label Studio's "Start training" without the webhook feature flag: same as the event."""
        project = (
            request.project.get("id") if isinstance(request.project, dict) else request.project
        )
        payload = {
            "action": "START_TRAINING",
            "project": {"id": project, "label_config": request.label_config},
            "tasks": request.annotations,
        }
        await offload(store_event, events, "START_TRAINING", payload)
        return {"status": "ok"}

    def version_names() -> list[str]:
        names = [model.model_version]
        if loop is not None:
            names += [model_version(settings.preset, v.version) for v in loop.registry.versions()]
        return list(dict.fromkeys(names))

    @app.get("/versions", dependencies=[Depends(require_auth)])
    async def versions() -> dict[str, list[str]]:
        return {"versions": await offload(version_names)}

    @app.get("/metrics", dependencies=[Depends(require_auth)], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus text format; behind basic auth like the rest (scrape with basic_auth)."""
        return await offload(metrics.exposition, metrics_registry)

    return app


_basic = HTTPBasic(auto_error=False)
Credentials = Annotated[HTTPBasicCredentials | None, Depends(_basic)]


async def require_auth(request: Request, credentials: Credentials) -> None:
    """Basic auth on every route but /health, when BASIC_AUTH_USER/PASS are set."""
    settings: Settings = request.app.state.settings
    if settings.auth_enabled and not _basic_ok(settings, credentials):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "basic auth required",
            headers={"WWW-Authenticate": 'Basic realm="clipsam"'},
        )


async def require_webhook_auth(request: Request, credentials: Credentials) -> None:
    """Basic auth, or the webhook secret (Label Studio's auto-created webhook has no password)."""
    secret = request.app.state.settings.webhook_secret
    if secret and _secret_ok(secret, request):
        return
    await require_auth(request, credentials)


#: Errors that mean "no room": 507 Insufficient Storage; any other write error is a 503.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def store_event(events: EventLog, action: str, payload: dict[str, Any]) -> None:
    """Fsync the event, or answer an error: the log is then left exactly as it was."""
    try:
        events.record(action, payload)
    except OSError as exc:
        metrics.webhook_failure(exc.errno)
        code = 507 if exc.errno in NO_SPACE else 503
        raise HTTPException(code, f"event not stored: {exc.strerror or exc}") from exc
    metrics.webhook_event(action)


def loop_settings(settings: Settings) -> LoopSettings:
    """What the correction loop needs of this backend's settings (no secrets)."""
    return LoopSettings(
        model_dir=settings.model_dir,
        preset=settings.preset,
        pipeline_overrides=pipeline_overrides(settings),
        fetch=settings.fetch,
        redis_url=settings.redis_url,
        category_key=settings.category_key,
        default_category=settings.default_category,
        retrain_every=settings.retrain_every,
        retrain_interval=settings.retrain_interval,
        retrain_epochs=settings.retrain_epochs,
        retrain_holdout=settings.retrain_holdout,
        retrain_patience=settings.retrain_patience,
        retrain_warm_epochs=settings.retrain_warm_epochs,
        retrain_promote_early=settings.retrain_promote_early,
        retrain_heartbeat=settings.retrain_heartbeat,
        base_data=settings.base_data,
        inprocess_worker=settings.inprocess_worker,
        reload_poll=settings.reload_poll,
        fewshot_images=settings.fewshot_images,
        fewshot_patches=settings.fewshot_patches,
    )


def _serving_head(settings: Settings) -> HeadVersion | None:
    try:
        return ModelRegistry(settings.model_dir).serving()
    except Exception as exc:  # an unreadable registry must not stop the service
        logger.error("model registry unreadable: %s", exc)
        return None


def _fallback_heads(settings: Settings) -> list[Path]:
    """Heads served before the registry's current one, newest first."""
    try:
        return [head.path for head in ModelRegistry(settings.model_dir).fallbacks()]
    except Exception as exc:
        logger.error("model registry unreadable: %s", exc)
        return []


def _predict(
    predictor: TaskPredictor, tasks: list[dict[str, Any]], config: str, settings: Settings
) -> dict[str, Any]:
    """One /predict body, in a prediction thread."""
    spec = _spec(config, settings)
    try:
        return {"results": predictor.predict(tasks, spec)}
    except ModelNotReady as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "10"}) from exc


def _spec(config: str, settings: Settings) -> LabelSpec:
    try:
        return parse_label_config(config, settings.defect_label)
    except LabelConfigError as exc:
        raise HTTPException(422, str(exc)) from exc


def _basic_ok(settings: Settings, credentials: HTTPBasicCredentials | None) -> bool:
    if credentials is None:
        return False
    user_ok = secrets.compare_digest(credentials.username, settings.basic_auth_user or "")
    pass_ok = secrets.compare_digest(credentials.password, settings.basic_auth_pass or "")
    return user_ok and pass_ok


def _secret_ok(secret: str, request: Request) -> bool:
    """The webhook secret, in ``X-Webhook-Secret``, ``Authorization: Bearer`` or ``?secret=``."""
    auth = request.headers.get("authorization", "")
    candidates = [
        request.headers.get("x-webhook-secret", ""),
        auth[7:] if auth.lower().startswith("bearer ") else "",
        request.query_params.get("secret", ""),
    ]
    if any(c and secrets.compare_digest(c, secret) for c in candidates[:2]):
        return True
    if candidates[2] and secrets.compare_digest(candidates[2], secret):
        _QUERY_SECRET.warning(
            "webhook secret sent in the URL (?secret=); it is masked in the access log, but "
            "prefer the X-Webhook-Secret header (Label Studio: Settings → Webhooks → headers)"
        )
        return True
    return False


_QUERY_SECRET = ThrottledWarning(logger, every=3600.0)
