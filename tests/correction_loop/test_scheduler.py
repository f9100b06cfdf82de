"""When retraining is queued: after N corrections, on an interval, on request; one per project."""

from __future__ import annotations

import time

import numpy as np
from rq import Queue
from rq.job import JobStatus

from correction_loop.corrections import correction_from_event
from correction_loop.keys import RETRAIN_QUEUE as QUEUE_NAME
from correction_loop.keys import retrain_alive as alive_key
from correction_loop.scheduler import RetrainPolicy, RetrainScheduler
from correction_loop.store import CorrectionStore
from tests.helpers import annotation_event


def _store_with(redis_server, count: int, project: int = 3) -> CorrectionStore:
    store = CorrectionStore(redis_server)
    mask = np.zeros((8, 8), dtype=bool)
    for aid in range(1, count + 1):
        event = annotation_event(aid + 100 * project, aid, f"http://h/{aid}.png", mask,
                                 project=project)  # fmt: skip
        store.upsert(correction_from_event(event))
    return store


def _queued(redis_server) -> list[str]:
    return Queue(QUEUE_NAME, connection=redis_server).job_ids


def test_retrain_after_n_new_corrections(redis_server):
    store = _store_with(redis_server, 4)
    scheduler = RetrainScheduler(redis_server, store, RetrainPolicy(every=5), job_kwargs={})
    assert scheduler.on_event("ANNOTATION_CREATED", "3") is None  # 4 < 5
    _store_with(redis_server, 5)
    job = scheduler.on_event("ANNOTATION_CREATED", "3")
    assert job is not None and job.kwargs["reason"] == "5 new corrections"
    assert scheduler.on_event("ANNOTATION_CREATED", "3") is None  # one per project
    assert _queued(redis_server) == ["retrain-3"]
    assert (
        RetrainScheduler(redis_server, store, RetrainPolicy(every=0), {}).on_event(
            "ANNOTATION_CREATED", "3"
        )
        is None
    )  # every=0: the count policy is off


def test_start_training_queues_at_once_and_other_projects_are_independent(redis_server):
    store = _store_with(redis_server, 1)
    _store_with(redis_server, 1, project=7)
    scheduler = RetrainScheduler(redis_server, store, RetrainPolicy(every=100), job_kwargs={"x": 1})
    job = scheduler.on_event("START_TRAINING", "3")
    assert job is not None and job.kwargs == {"x": 1, "project": "3",
                                              "reason": "requested from Label Studio"}  # fmt: skip
    assert scheduler.on_event("START_TRAINING", "7") is not None
    assert sorted(_queued(redis_server)) == ["retrain-3", "retrain-7"]


def test_interval_policy_only_for_projects_with_pending_corrections(redis_server):
    store = _store_with(redis_server, 2)
    _store_with(redis_server, 1, project=7)
    store.reset_pending("7", 1)
    scheduler = RetrainScheduler(redis_server, store, RetrainPolicy(every=0, interval=0.5), {})
    assert [j.id for j in scheduler.tick()] == ["retrain-3"]
    Queue(QUEUE_NAME, connection=redis_server).empty()
    assert scheduler.tick() == []  # the interval has not passed since the last run
    time.sleep(0.6)
    assert [j.id for j in scheduler.tick()] == ["retrain-3"]
    assert RetrainScheduler(redis_server, store, RetrainPolicy(interval=0), {}).tick() == []


def test_a_started_job_without_heartbeat_is_replaced(redis_server):
    store = _store_with(redis_server, 1)
    scheduler = RetrainScheduler(redis_server, store, RetrainPolicy(every=0, heartbeat=0.2), {})
    job = scheduler.enqueue("3", "first")
    job.set_status(JobStatus.STARTED)
    job.started_at = job.enqueued_at
    job.save()
    redis_server.set(alive_key("3"), 1, px=300)
    assert scheduler.enqueue("3", "while alive") is None
    time.sleep(0.5)  # the heartbeat expired: its worker died
    replacement = scheduler.enqueue("3", "after the crash")
    assert replacement is not None and replacement.get_status() == JobStatus.QUEUED


def test_what_arrives_during_a_run_is_caught_up_afterwards(redis_server):
    store = _store_with(redis_server, 3)
    scheduler = RetrainScheduler(redis_server, store, RetrainPolicy(every=3), job_kwargs={})
    job = scheduler.on_event("ANNOTATION_CREATED", "3")
    assert job is not None
    job.set_status(JobStatus.STARTED)  # a worker took it
    assert scheduler.on_event("START_TRAINING", "3") is None  # one per project...
    assert scheduler.tick() == []  # ...and still running: nothing yet
    job.set_status(JobStatus.FINISHED)
    store.reset_pending("3", 3)  # what the finished job took in
    (follow_up,) = scheduler.tick()  # the request made during the run
    assert follow_up.kwargs["reason"] == "requested from Label Studio during the last run"
    follow_up.set_status(JobStatus.FINISHED)
    assert scheduler.tick() == []  # the request was served once
    _store_with(redis_server, 6)  # 3 more corrections than the last run saw
    follow_up.set_status(JobStatus.FINISHED)
    (caught_up,) = scheduler.tick()
    assert caught_up.kwargs["reason"] == "3 new corrections"
