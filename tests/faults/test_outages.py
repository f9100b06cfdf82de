"""Outages under load: Redis killed mid-flood, the backend SIGKILLed with a backlog.

Real redis-server processes, a real ``python -m backend`` process, real HTTP. Counts: every
acknowledged event is stored exactly once (the stream has one entry per annotation).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend.app import create_app
from backend.model import ModelService
from backend.settings import Settings
from correction_loop.store import CorrectionStore
from tests.backend.conftest import serve
from tests.faults.harness import Flood, LatencyProbe, events, row
from tests.helpers import wait_for
from tests.processes import free_port
from tests.redis_process import RedisProcess

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-hook-value"


def _stored(store: CorrectionStore) -> set[int]:
    return {c.annotation_id for c in store.list_project("3")}


def _upserts(store: CorrectionStore) -> int:
    return sum(1 for _, e in store.stream(count=100_000) if e["action"] == "upserted")


@pytest.mark.slow
def test_redis_killed_mid_flood_loses_nothing(tmp_path, blob_pipeline, fault_report):
    redis_server = RedisProcess(tmp_path / "redis").start()
    settings = Settings(model_dir=tmp_path / "model_dir", preset="tiny", retrain_every=0,
                        inprocess_worker=False, redis_url=redis_server.url)  # fmt: skip
    app = create_app(settings, ModelService(settings, loader=lambda: blob_pipeline))
    store = CorrectionStore(redis_server.client())
    batch = events(300)
    try:
        with serve(app) as base:
            flood = Flood(base, concurrency=16)
            with LatencyProbe(base) as probe:
                flood.send(batch[:100])
                redis_server.kill()  # SIGKILL mid-flood
                flood.send(batch[100:200])
                pump = app.state.loop.pump
                passes = pump.passes
                time.sleep(2.0)
                redis_server.start()  # same port, same append-only file
                flood.send(batch[200:])
            assert pump.passes - passes <= 4  # the backoff held while webhooks kept arriving
            wait_for(lambda: _stored(store) == flood.acked, 60, "every acknowledged event")
        stored = _stored(store)
        fault_report(row("Redis SIGKILLed mid-flood (300 events, concurrency 16)", flood.sent,
                         len(flood.acked), len(stored), len(flood.acked - stored),
                         probe.latencies, flood.latencies))  # fmt: skip
        assert flood.codes == {200: 300} and _upserts(store) == 300
        # This app runs inside the pytest process: late in the full suite, that process's own
        # pauses (garbage collection over every earlier test's objects) reached 0.9-1.1 s and
        # stalled /health as much as /webhook. The subprocess test below holds the real 1 s.
        assert max(probe.latencies) < 2.0 and max(flood.latencies) < 2.0
    finally:
        redis_server.kill()


def _start_backend(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    url = f"http://127.0.0.1:{env['PORT']}"
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "backend"], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 90, "the backend process", interval=0.3, context=lambda: log.read_text()[-3000:])
    return process, url


@pytest.mark.slow
def test_backend_sigkilled_with_a_backlog_while_redis_is_down(tmp_path, fault_report):
    redis_server = RedisProcess(tmp_path / "redis")  # down for now
    log = tmp_path / "backend.log"
    env = {**os.environ, "MODEL_DIR": str(tmp_path / "model_dir"), "REDIS_URL": redis_server.url,
           "PORT": str(free_port()), "CLIPSAM_PRESET": "tiny", "CLIPSAM_RETRAIN_EVERY": "0",
           "CLIPSAM_CONFIG": json.dumps({"weights": "random", "use_sam": False}),
           "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "pw", "CLIPSAM_WEBHOOK_SECRET": SECRET,
           "CLIPSAM_RELOAD_POLL": "0.5", "LOG_LEVEL": "INFO"}  # fmt: skip
    process, url = _start_backend(env, log)
    try:
        # The query-string secret (kept for existing webhooks) must not reach the log.
        flood = Flood(url, concurrency=16, send_path=f"/webhook?secret={SECRET}")
        with LatencyProbe(url) as probe:
            flood.send(events(200))
            time.sleep(3.0)  # Redis is still down: the pump backs off, warnings stay few
        backlog = (tmp_path / "model_dir" / "events" / "webhook.jsonl").read_bytes().count(b"\n")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        text = log.read_text()
        assert SECRET not in text and "secret=***" in text
        assert text.count("store unavailable") <= 2, text.count("store unavailable")
        assert backlog == len(flood.acked) == 200

        redis_server.start()
        store = CorrectionStore(redis_server.client())
        process, url = _start_backend(env, log)
        wait_for(lambda: _stored(store) == flood.acked, 60, "the backlog in Redis")
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        stored = _stored(store)
        fault_report(row("backend SIGKILLed with 200 events not in Redis (Redis down)",
                         flood.sent, len(flood.acked), len(stored), len(flood.acked - stored),
                         probe.latencies, flood.latencies))  # fmt: skip
        assert _upserts(store) == 200
        assert max(probe.latencies) < 1.0 and max(flood.latencies) < 1.0
    finally:
        if process.poll() is None:
            process.kill()
        redis_server.kill()
