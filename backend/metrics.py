"""Prometheus metrics for ``GET /metrics``: traffic, predictions, corrections, retrains, model.

Counters live at module level, as prometheus_client intends, so any module counts with one call
(``PREDICTED_TASKS.labels("ok").inc()``). Each app gets its own registry that exposes them next
to a collector reading that app's live state at scrape time (model ready and version, registered
heads, retrain jobs, webhook backlog): no code path has to remember to update a gauge, and test
apps in one process do not collide. Counters are per process: with ``WORKERS`` > 1 a scrape sees
whichever process answered (prometheus_client's multiprocess mode is not wired).
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Match

from clipsam.log_throttle import ThrottledWarning
from correction_loop.registry import ModelRegistry

if TYPE_CHECKING:  # predictor.py imports this module: keep it light and free of cycles
    from rq import Queue

    from backend.model import ModelService
    from backend.settings import Settings
    from correction_loop.loop import CorrectionLoop

logger = logging.getLogger(__name__)

#: Label values are bounded: unknown methods, unmatched paths and unknown actions are lumped.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
OTHER = "other"
#: Head statuses always exported (0 when none), so dashboards need no absent() juggling.
HEAD_STATUSES = ("candidate", "promoted", "rejected", "retired")
#: /predict takes up to Label Studio's 100 s timeout; /health must stay well under 1 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

HTTP_REQUESTS = Counter(
    "clipsam_http_requests",
    "HTTP requests by route template, method and status code",
    ["route", "method", "status"],
    registry=None,
)
HTTP_LATENCY = Histogram(
    "clipsam_http_request_duration_seconds",
    "Time to the response start, by route template and method",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
    registry=None,
)
PREDICTED_TASKS = Counter(
    "clipsam_predicted_tasks",
    "Tasks through /predict: ok (a prediction) or failed (image unusable: empty result)",
    ["outcome"],
    registry=None,
)
WEBHOOK_EVENTS = Counter(
    "clipsam_webhook_events",
    "Webhook events by action: correction actions are stored (fsynced) for the loop; "
    "other: ignored",
    ["action"],
    registry=None,
)
WEBHOOK_FAILURES = Counter(
    "clipsam_webhook_failures",
    "Webhook events answered with an error because the event log refused the write, by errno",
    ["reason"],
    registry=None,
)
SHARED = (HTTP_REQUESTS, HTTP_LATENCY, PREDICTED_TASKS, WEBHOOK_EVENTS, WEBHOOK_FAILURES)


def install(
    app: FastAPI,
    settings: Settings,
    model: ModelService,
    loop: CorrectionLoop | None,
    stored_actions: Iterable[str],
) -> CollectorRegistry:
    """Time every request (outermost middleware: 413s count too); returns the app's registry."""
    for outcome in ("ok", "failed"):
        PREDICTED_TASKS.labels(outcome)
    for action in (*stored_actions, OTHER):
        WEBHOOK_EVENTS.labels(action)
    registry = CollectorRegistry()
    for metric in SHARED:
        registry.register(metric)
    registry.register(StateCollector(settings, model, loop))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start, code = time.perf_counter(), 500  # an exception escaping the app is a 500
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            route = route_template(request)
            method = request.method if request.method in METHODS else OTHER
            HTTP_REQUESTS.labels(route, method, str(code)).inc()
            HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - start)

    return registry


def webhook_event(action: str) -> None:
    """Count one webhook event (``other`` for actions that are not stored)."""
    WEBHOOK_EVENTS.labels(action).inc()


def webhook_failure(error: int | None) -> None:
    """Count one event the log could not store (``ENOSPC``, ``EIO``...)."""
    WEBHOOK_FAILURES.labels(errno.errorcode.get(error or 0, "other")).inc()


def exposition(registry: CollectorRegistry) -> Response:
    """The registry in Prometheus' text format."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def route_template(request: Request) -> str:
    """``/predict``, not ``/predict?x``; raw paths would make one series per URL a scanner tries.

    The router leaves the matched route in the scope; a request answered before routing (413)
    is matched here.
    """
    route = request.scope.get("route")
    if route is None:
        for candidate in request.app.router.routes:
            match, _ = candidate.matches(request.scope)
            if match == Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None) or UNMATCHED


class StateCollector(Collector):
    """Gauges read from the app's live objects at each scrape."""

    def __init__(
        self, settings: Settings, model: ModelService, loop: CorrectionLoop | None
    ) -> None:
        self.settings = settings
        self.model = model
        self.loop = loop
        self.registry = loop.registry if loop is not None else ModelRegistry(settings.model_dir)
        self._outage = ThrottledWarning(logger)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "clipsam_model_ready",
            "1 once the model is loaded and /predict answers (0 while loading or failed)",
            value=float(self.model.ready),
        )
        yield InfoMetricFamily(
            "clipsam_model",
            "The model_version Label Studio sees; a new head brings a new one",
            value={"model_version": self.model.model_version, "preset": self.settings.preset},
        )
        yield from self._heads()
        if self.loop is not None:
            yield from self._loop_state(self.loop)

    def _heads(self) -> Iterator[Metric]:
        """Registered heads by status: retrains that ended promoted, rejected, or retired later."""
        try:
            tally = Tally(v.status for v in self.registry.versions())
        except Exception as exc:  # a scrape must not fail on an unreadable registry
            logger.warning("metrics: head registry unreadable: %s", exc)
            return
        family = GaugeMetricFamily(
            "clipsam_head_versions", "Registered head versions by status", labels=["status"]
        )
        for status in sorted({*HEAD_STATUSES, *tally}):
            family.add_metric([status], tally[status])
        yield family

    def _loop_state(self, loop: CorrectionLoop) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "clipsam_webhook_backlog_bytes",
            "Webhook events stored in the log but not yet applied to Redis",
            value=max(0, loop.pump.pending_bytes()),
        )
        queue = loop.scheduler.queue
        try:  # no cleanup: a scrape must not write to Redis
            states = {
                "queued": queue.count,
                "started": queue.started_job_registry.get_job_count(cleanup=False),
                "finished": queue.finished_job_registry.get_job_count(cleanup=False),
                "failed": queue.failed_job_registry.get_job_count(cleanup=False),
            }
        except Exception as exc:  # Redis down: say so instead of failing the scrape
            self._outage.warning("metrics: Redis unavailable: %s", exc)
            yield GaugeMetricFamily("clipsam_redis_up", "1 when Redis answered", value=0)
            return
        yield GaugeMetricFamily("clipsam_redis_up", "1 when Redis answered", value=1)
        jobs = GaugeMetricFamily(
            "clipsam_retrain_jobs",
            "Retrain jobs on the queue by state (finished and failed ones are kept 7 days)",
            labels=["state"],
        )
        for state, count in states.items():
            jobs.add_metric([state], count)
        yield jobs
        try:
            yield from retrain_failures(queue)
        except Exception as exc:
            logger.warning("metrics: failed retrain jobs unreadable: %s", exc)


#: Failed jobs read per scrape for their reasons (the newest ones).
FAILED_JOBS_READ = 100


def retrain_failures(queue: Queue) -> Iterator[Metric]:
    """Failed retrain jobs by kind (killed, timeout, error) and the newest one's reason."""
    from rq.job import Job

    from correction_loop.scheduler import ERROR, KILLED, TIMEOUT, failure_of

    ids = queue.failed_job_registry.get_job_ids(cleanup=False)[-FAILED_JOBS_READ:]
    jobs = [job for job in Job.fetch_many(ids, connection=queue.connection) if job is not None]
    tally = Tally(failure_of(job)[0] for job in jobs)
    family = GaugeMetricFamily(
        "clipsam_retrain_failures",
        "Failed retrain jobs kept in rq's failed registry, by reason: killed (worker died), "
        "timeout, error (the job raised)",
        labels=["reason"],
    )
    for kind in sorted({KILLED, TIMEOUT, ERROR, *tally}):
        family.add_metric([kind], tally[kind])
    yield family
    if jobs:
        newest = max(jobs, key=lambda job: job.ended_at or job.enqueued_at or job.created_at)
        kind, reason = failure_of(newest)
        yield InfoMetricFamily(
            "clipsam_retrain_last_failure",
            "The newest failed retrain job and why it failed",
            value={"job": newest.id, "reason": kind, "message": reason.splitlines()[-1][:200]},
        )
