"""No correction is lost: replays, deletes, Redis down or restarted, backend restarts."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from rq import Queue

from backend.app import create_app
from backend.model import ModelService
from backend.settings import Settings
from correction_loop.keys import RETRAIN_QUEUE as QUEUE_NAME
from correction_loop.store import CorrectionStore
from tests.backend.conftest import serve
from tests.helpers import LABEL_CONFIG, annotation_event, wait_for
from tests.redis_process import RedisProcess


def _events(count: int, first: int = 1) -> list[dict]:
    events = []
    for aid in range(first, first + count):
        mask = np.zeros((40, 60), dtype=bool)
        if aid % 3:  # every third image is a good one: an annotation with no region
            mask[5 + aid % 20 : 15 + aid % 20, 10:30] = True
        events.append(annotation_event(aid, 1000 + aid, f"http://127.0.0.1:9/{aid}.png", mask))
    return events


def _ids(store: CorrectionStore) -> list[int]:
    return [c.annotation_id for c in store.list_project("3")]


@pytest.fixture
def loop_settings(tmp_path: Path, blob_pipeline) -> Settings:
    return Settings(
        model_dir=tmp_path / "model_dir", preset="tiny", allowed_hosts=("127.0.0.1",),
        default_category="widget", retrain_every=0, inprocess_worker=False, reload_poll=0.5,
    )  # fmt: skip


def _backend(settings: Settings, pipeline):
    return serve(create_app(settings, ModelService(settings, loader=lambda: pipeline)))


def test_replays_are_stored_once_and_deletes_remove(embedded_redis, backend, tmp_path):
    client = backend(corrections=True, retrain_every=0, inprocess_worker=False)
    events = _events(6)
    for event in events + events[:3]:  # Label Studio retries: the first three arrive twice
        assert client.post("/webhook", json=event).json() == {"status": "ok"}
    store = CorrectionStore(embedded_redis(tmp_path / "model_dir"))
    wait_for(lambda: len(_ids(store)) == 6, what="six corrections")
    record = store.get(2)
    assert record is not None and record.has_defect and record.mask().sum() == 200
    assert store.get(3) is not None and not store.get(3).has_defect  # kept: a good image

    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 3},
               "annotations": [{"id": 2}, {"id": 5}, {"id": 404}]}  # fmt: skip
    assert client.post("/webhook", json=deleted).status_code == 200
    wait_for(lambda: _ids(store) == [1, 3, 4, 6], what="the deletes")
    actions = [entry["action"] for _, entry in store.stream(count=100)]
    assert actions == ["upserted"] * 6 + ["deleted"] * 2  # replays changed nothing
    assert store.pending("3") == 8


def test_redis_killed_and_restarted_mid_stream_loses_nothing(
    tmp_path, loop_settings, blob_pipeline
):
    redis_server = RedisProcess(tmp_path / "redis").start()
    settings = dataclasses.replace(loop_settings, redis_url=redis_server.url)
    store = CorrectionStore(redis_server.client())
    events = _events(12)
    try:
        with _backend(settings, blob_pipeline) as url, httpx.Client(base_url=url) as client:
            for event in events[:4]:
                assert client.post("/webhook", json=event).status_code == 200
            wait_for(lambda: _ids(store) == [1, 2, 3, 4], what="the first four")

            redis_server.kill()  # SIGKILL: only the fsynced append-only file survives
            for event in events[4:8]:  # Redis is down: accepted, spooled in the event log
                assert client.post("/webhook", json=event).json() == {"status": "ok"}

            redis_server.start()  # same port, same data folder
            for event in events[8:]:
                assert client.post("/webhook", json=event).status_code == 200
            wait_for(lambda: _ids(store) == list(range(1, 13)), what="all twelve")
            assert [e["action"] for _, e in store.stream(count=100)] == ["upserted"] * 12
    finally:
        redis_server.kill()


def test_events_spooled_while_redis_is_down_survive_a_backend_restart(
    tmp_path, loop_settings, blob_pipeline
):
    redis_server = RedisProcess(tmp_path / "redis")  # not started: Redis is down
    settings = dataclasses.replace(loop_settings, redis_url=redis_server.url)
    events = _events(5)
    with _backend(settings, blob_pipeline) as url, httpx.Client(base_url=url) as client:
        for event in events:
            assert client.post("/webhook", json=event).json() == {"status": "ok"}
    # The backend is gone; its events wait in MODEL_DIR/events. Redis comes back, then a backend.
    redis_server.start()
    store = CorrectionStore(redis_server.client())
    try:
        assert _ids(store) == []
        with _backend(settings, blob_pipeline):
            wait_for(lambda: _ids(store) == [1, 2, 3, 4, 5], what="the spooled events")
        with _backend(settings, blob_pipeline):  # a second restart replays nothing twice
            time.sleep(1.0)
        assert [e["action"] for _, e in store.stream(count=100)] == ["upserted"] * 5
    finally:
        redis_server.kill()


def test_a_malformed_correction_is_set_aside_and_the_rest_flow(embedded_redis, backend, tmp_path):
    client = backend(corrections=True, retrain_every=0, inprocess_worker=False)
    broken = _events(1, first=7)[0]
    broken["annotation"]["result"][0]["value"]["rle"] = [1, 2, 3]  # a truncated brush stroke
    for event in [broken, *_events(2, first=8)]:
        assert client.post("/webhook", json=event).status_code == 200
    store = CorrectionStore(embedded_redis(tmp_path / "model_dir"))
    wait_for(lambda: _ids(store) == [8, 9], what="the good events")
    rejected = (tmp_path / "model_dir" / "events" / "rejected.jsonl").read_text()
    assert "annotation 7" in rejected and "brush" in rejected


def test_legacy_train_request_imports_annotations_and_queues_a_retrain(
    embedded_redis, backend, tmp_path
):
    """Without Label Studio's webhook-training flag, "Start training" POSTs every annotated task."""
    client = backend(corrections=True, retrain_every=0, inprocess_worker=False)
    events = _events(4, first=20)
    tasks = [{**e["task"], "annotations": [e["annotation"]]} for e in events]
    body = {"annotations": tasks, "project": "3.1795423472", "label_config": LABEL_CONFIG}
    assert client.post("/train", json=body).json() == {"status": "ok"}
    connection = embedded_redis(tmp_path / "model_dir")
    store = CorrectionStore(connection)
    wait_for(lambda: _ids(store) == [20, 21, 22, 23], what="the imported annotations")
    job = wait_for(lambda: Queue(QUEUE_NAME, connection=connection).fetch_job("retrain-3"),
                    what="the queued retrain")  # fmt: skip
    assert job.kwargs["project"] == "3" and job.kwargs["reason"] == "requested from Label Studio"
    assert client.post("/train", json={"annotations": []}).status_code == 422  # no project
