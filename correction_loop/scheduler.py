"""When to retrain: after N new corrections, after an interval, or at once on START_TRAINING.

Jobs go to an rq queue; at most one retraining job per project is queued or running at a time
(the job id is the project's, and a queued or running job with that id is left alone).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from clipsam.log_throttle import ThrottledWarning
from correction_loop import keys
from correction_loop.retrain import HEARTBEAT_SECONDS
from correction_loop.store import CorrectionStore

logger = logging.getLogger(__name__)

ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
#: Finished and failed jobs stay visible this long (rq's registries, /metrics).
FAILURE_TTL = 7 * 24 * 3600
#: Why a retrain failed, as /metrics reports it.
KILLED, TIMEOUT, ERROR = "killed", "timeout", "error"


def failure_of(job: Job) -> tuple[str, str]:
    """(kind, reason) of a failed job: killed, timeout or error, and the message."""
    return _failure_kind(job), _failure_text(job)


def _failure_text(job: Job) -> str:
    if job.meta.get("failure"):
        return str(job.meta["failure"])
    result = job.latest_result()
    return (getattr(result, "exc_string", None) or "no reason recorded").strip()


def _failure_kind(job: Job) -> str:
    kind = job.meta.get("failure_kind")
    if kind:
        return str(kind)
    text = _failure_text(job)
    return TIMEOUT if "JobTimeoutException" in text or "timeout" in text.lower() else ERROR


@dataclass(frozen=True)
class RetrainPolicy:
    every: int = 20  # CLIPSAM_RETRAIN_EVERY: new corrections that trigger a retrain
    interval: float = 0.0  # CLIPSAM_RETRAIN_INTERVAL seconds; 0 = off
    job_timeout: int = 3600
    #: CLIPSAM_RETRAIN_HEARTBEAT: how often a running job says it is alive; a started job
    #: silent for two periods is taken for abandoned.
    heartbeat: float = HEARTBEAT_SECONDS


class RetrainScheduler:
    """Decides and enqueues; ``job_kwargs`` go to :func:`correction_loop.retrain.retrain_job`."""

    def __init__(
        self,
        connection: redis.Redis,
        store: CorrectionStore,
        policy: RetrainPolicy,
        job_kwargs: dict[str, Any],
        prefix: str = keys.PREFIX,
    ) -> None:
        self.connection = connection
        self.store = store
        self.policy = policy
        self.job_kwargs = job_kwargs
        self.prefix = prefix
        self.queue = Queue(keys.RETRAIN_QUEUE, connection=connection)
        self._stop = threading.Event()
        self._outage = ThrottledWarning(logger)

    def on_event(self, action: str, project: str | None) -> Job | None:
        """Called after each event reached the store."""
        if not project:
            return None
        if action == "START_TRAINING":
            job = self.enqueue(project, "requested from Label Studio")
            if job is None:  # one is running: remember the request for when it is done
                self.connection.set(self._requested_key(project), 1)
            return job
        pending = self.store.pending(project)
        if self._enough(pending):
            return self.enqueue(project, f"{pending} new corrections")
        return None

    def tick(self) -> list[Job]:
        """Catch up on what events alone would leave waiting, per project.

        A request or N corrections that arrived while that project's job was running (it took
        in only what was there when it started), and the interval policy.
        """
        self.reap()
        jobs = []
        now = time.time()
        for project in self.store.projects():
            pending = self.store.pending(project)
            if self.connection.exists(self._requested_key(project)):
                reason = "requested from Label Studio during the last run"
            elif self._enough(pending):
                reason = f"{pending} new corrections"
            elif self.policy.interval > 0 and pending > 0 and self._due(project, now):
                reason = f"interval of {self.policy.interval:.0f} s"
            else:
                continue
            job = self.enqueue(project, reason)
            if job is not None:
                self.connection.delete(self._requested_key(project))
                jobs.append(job)
        return jobs

    def enqueue(self, project: str, reason: str) -> Job | None:
        """Queue a retrain of ``project`` unless one is queued or running; returns the job."""
        job_id = keys.retrain_job_id(project)
        try:
            existing = Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            existing = None
        # Job.fetch has just loaded the status: no second read from Redis.
        status = existing.get_status(refresh=False) if existing is not None else None
        if existing is not None and status in ACTIVE:
            if not self._abandoned(existing, project):
                logger.info("retrain of project %s already queued or running", project)
                return None
            self._bury_abandoned(existing)
        elif existing is not None and status == JobStatus.FAILED:
            self.archive(existing, _failure_kind(existing), _failure_text(existing))
        self.connection.set(self._last_key(project), time.time())
        job = self.queue.enqueue(
            "correction_loop.retrain.retrain_job",
            kwargs={**self.job_kwargs, "project": project, "reason": reason},
            job_id=job_id,
            job_timeout=self.policy.job_timeout,
            result_ttl=FAILURE_TTL,
            failure_ttl=FAILURE_TTL,
        )
        logger.info("retrain of project %s queued: %s", project, reason)
        return job

    def reap(self) -> list[str]:
        """Move started jobs whose worker died (no heartbeat) to the failed registry."""
        buried = []
        for job_id in self.queue.started_job_registry.get_job_ids(cleanup=False):
            try:
                job = Job.fetch(job_id, connection=self.connection)
            except NoSuchJobError:
                continue
            project = str((job.kwargs or {}).get("project", ""))
            if project and self._abandoned(job, project):
                buried.append(self._bury_abandoned(job))
        return buried

    def _bury_abandoned(self, job: Job) -> str:
        project = (job.kwargs or {}).get("project")
        logger.warning(
            "retrain job of project %s stopped sending heartbeats (worker killed?); "
            "recorded as failed", project,
        )  # fmt: skip
        return self.archive(job, KILLED, "worker stopped sending heartbeats (killed or lost)")

    def archive(self, job: Job, kind: str, reason: str) -> str:
        """Keep a failed or killed run in rq's failed registry under an id of its own (the
        project's job id is reused by its next run), with why; returns the archived id."""
        record = Job.create(
            cast(str, job.func_name), kwargs=job.kwargs, connection=self.connection,
            origin=keys.RETRAIN_QUEUE,
            id=f"{job.id}-{kind}-{int(time.time() * 1000)}", description=job.description,
            failure_ttl=FAILURE_TTL, meta={**job.meta, "failure_kind": kind, "failure": reason},
        )  # fmt: skip
        record.started_at = job.started_at
        record.ended_at = datetime.now(UTC)
        record.set_status(JobStatus.FAILED, pipeline=None)
        record.save()
        self.queue.failed_job_registry.add(record, ttl=FAILURE_TTL, exc_string=reason)
        self.queue.started_job_registry.remove_executions(job)
        self.queue.failed_job_registry.remove(job)
        job.delete()
        return record.id

    def _enough(self, pending: int) -> bool:
        """The N-corrections policy: enough new corrections since the last run."""
        return self.policy.every > 0 and pending >= self.policy.every

    def _due(self, project: str, now: float) -> bool:
        """The interval policy: long enough since this project's last run was queued."""
        last = float(self.connection.get(self._last_key(project)) or 0)
        return now - last >= self.policy.interval

    def _abandoned(self, job: Job, project: str) -> bool:
        """Started long enough ago to have sent a heartbeat, yet none is alive."""
        if job.get_status(refresh=False) != JobStatus.STARTED or job.started_at is None:
            return False
        grace = 2 * self.policy.heartbeat
        running = (datetime.now(UTC) - job.started_at.replace(tzinfo=UTC)).total_seconds()
        # The job writes its heartbeat under the default prefix (it is not told the prefix).
        return running > grace and not self.connection.exists(keys.retrain_alive(project))

    def run_interval_loop(self, period: float = 30.0) -> None:
        """Background thread body: :meth:`tick` every ``period`` seconds."""
        while not self._stop.wait(period):
            try:
                self.tick()
            except redis.exceptions.RedisError as exc:
                self._outage.warning("retrain check skipped: %s", exc)
            except Exception:  # the loop must outlive any surprise
                logger.exception("retrain check failed")

    def stop(self) -> None:
        self._stop.set()

    def _requested_key(self, project: str) -> str:
        return keys.retrain_requested(project, self.prefix)

    def _last_key(self, project: str) -> str:
        return keys.last_retrain(project, self.prefix)
