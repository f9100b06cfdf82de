"""Observability over real HTTP: /metrics (Prometheus text) and the opt-in JSON log format.

Counters are process-wide, so each test compares scrapes taken before and after its requests.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from clipsam.logging_setup import JsonFormatter
from correction_loop.registry import ModelRegistry

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Defect"/></BrushLabels>
</View>"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client, **kwargs) -> Samples:
    """Every sample of /metrics, keyed by (name, labels); parsing it is part of the test."""
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(client, name: str, expected: float, timeout: float = 20.0, **labels) -> Samples:
    """Scrape until a gauge that background threads set reaches ``expected``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = scrape(client)
        if value(samples, name, **labels) == expected:
            return samples
        time.sleep(0.05)
    raise AssertionError(f"{name}{labels} never reached {expected}")


def test_predictions_webhooks_and_requests_are_counted(backend, image_server):
    url, folder = image_server
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(folder / "part.png")
    client = backend()
    before = scrape(client)
    tasks = [{"id": 1, "data": {"image": f"{url}/part.png"}},
             {"id": 2, "data": {"image": f"{url}/missing.png"}}]  # fmt: skip
    response = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG})
    assert response.status_code == 200, response.text
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 5, "result": []}}
    assert client.post("/webhook", json=event).json() == {"status": "ok"}
    assert client.post("/webhook", json={"action": "TASKS_CREATED"}).json()["status"] == "ignored"
    assert client.post("/webhook", json={"action": "X" * 30}).json()["status"] == "ignored"
    assert client.get("/no/such/path/42").status_code == 404
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("clipsam_predicted_tasks_total", outcome="ok") == 1
    assert delta("clipsam_predicted_tasks_total", outcome="failed") == 1
    assert delta("clipsam_webhook_events_total", action="ANNOTATION_CREATED") == 1
    assert delta("clipsam_webhook_events_total", action="other") == 2  # no label per action name
    assert delta("clipsam_webhook_events_total", action="ANNOTATIONS_DELETED") == 0
    requests = "clipsam_http_requests_total"
    assert delta(requests, route="/predict", method="POST", status="200") == 1
    assert delta(requests, route="/webhook", method="POST", status="200") == 3
    assert delta(requests, route="unmatched", method="GET", status="404") == 1
    assert not any("/no/such" in str(labels) for _, labels in after)  # templates, not paths
    latency = "clipsam_http_request_duration_seconds"
    assert delta(f"{latency}_count", route="/predict", method="POST") == 1
    assert delta(f"{latency}_sum", route="/predict", method="POST") > 0
    assert delta(f"{latency}_bucket", route="/predict", method="POST", le="+Inf") == 1
    # the scrape before this one is counted too, under its own template
    assert delta(requests, route="/metrics", method="GET", status="200") == 1
    assert value(after, "clipsam_model_ready") == 1
    info = {"model_version": "clipsam-tiny-blob", "preset": "tiny"}
    assert value(after, "clipsam_model_info", **info) == 1
    assert value(after, "clipsam_head_versions", status="promoted") == 0  # listed, even at 0
    assert ("clipsam_redis_up", frozenset()) not in after  # no correction loop in this app
    assert value(after, "process_resident_memory_bytes") > 0


def test_requests_refused_before_routing_keep_their_route(backend):
    client = backend(max_request_bytes=1000)
    before = scrape(client)
    big = client.post("/predict", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert big.status_code == 413
    labels = {"route": "/predict", "method": "POST", "status": "413"}
    assert value(scrape(client), "clipsam_http_requests_total", **labels) == (
        value(before, "clipsam_http_requests_total", **labels) + 1
    )


def test_metrics_need_basic_auth_when_it_is_on(backend):
    client = backend(basic_auth_user="ls", basic_auth_pass="s3cret", webhook_secret="hook-key")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", auth=("ls", "wrong")).status_code == 401
    secret_only = client.get("/metrics", headers={"X-Webhook-Secret": "hook-key"})
    assert secret_only.status_code == 401  # the webhook secret opens the webhook, nothing else
    assert value(scrape(client, auth=("ls", "s3cret")), "clipsam_model_ready") in (0, 1)
    assert "/metrics" not in client.get("/openapi.json", auth=("ls", "s3cret")).json()["paths"]


def test_model_gauges_follow_loading(backend, blob_pipeline):
    release = threading.Event()

    def slow_loader():
        release.wait(30)
        return blob_pipeline

    client = backend(loader=slow_loader)
    loading = scrape(client)
    assert value(loading, "clipsam_model_ready") == 0
    assert value(loading, "clipsam_model_info", model_version="clipsam-tiny-zero-shot",
                 preset="tiny") == 1  # fmt: skip
    release.set()
    ready = scrape_until(client, "clipsam_model_ready", 1)
    assert value(ready, "clipsam_model_info", model_version="clipsam-tiny-blob", preset="tiny")


def test_retrain_jobs_and_head_versions_come_from_redis_and_the_registry(
    backend, blob_pipeline, tmp_path
):
    client = backend(corrections=True, retrain_every=0, inprocess_worker=False)
    assert value(scrape(client), "clipsam_retrain_jobs", state="queued") == 0
    training = {"action": "START_TRAINING", "project": {"id": 7}}
    assert client.post("/webhook", json=training).json() == {"status": "ok"}
    queued = scrape_until(client, "clipsam_retrain_jobs", 1, state="queued")  # nobody works it
    assert value(queued, "clipsam_redis_up") == 1
    assert value(queued, "clipsam_webhook_events_total", action="START_TRAINING") >= 1
    scrape_until(client, "clipsam_webhook_backlog_bytes", 0)  # the pump's offset, just after

    registry = ModelRegistry(tmp_path / "model_dir")
    head = registry.register(blob_pipeline.new_head(0, kind="umci"), {"pixel_auroc": 0.5}, None)
    registry.reject(head.version, "worse than the serving head")
    heads = scrape(client)
    assert value(heads, "clipsam_head_versions", status="rejected") == 1
    assert value(heads, "clipsam_head_versions", status="candidate") == 0


# ---- JSON logs ----------------------------------------------------------------------------
def test_json_formatter_writes_one_parseable_object_per_record():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.json_logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("task %s: no prediction: %s", 7, "line one\nline two")
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.exception("model failed to load")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # multi-line messages and tracebacks stay inside their record
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "task 7: no prediction: line one\nline two"
    assert first["level"] == "WARNING" and first["logger"] == "tests.json_logs"
    assert first["time"].endswith("+00:00") and "exc_info" not in first
    assert second["level"] == "ERROR" and second["message"] == "model failed to load"
    assert "ZeroDivisionError" in second["exc_info"] and "Traceback" in second["exc_info"]


@pytest.mark.slow  # a fresh interpreter importing torch: ~5 s
def test_log_format_json_makes_the_whole_server_log_json(tmp_path: Path):
    """``python -m backend`` with LOG_FORMAT=json: uvicorn's lines and ours, tracebacks included."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "WORKERS")}
    env.update(LOG_FORMAT="json", HOST="127.0.0.1", PORT="0", CLIPSAM_PRESET="tiny",
               CLIPSAM_CORRECTIONS="false", MODEL_DIR=str(tmp_path / "model_dir"),
               CLIPSAM_CONFIG='{"no_such_knob": 1}')  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen([sys.executable, "-m", "backend"], cwd=root, env=env,
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline() if process.stderr else ""
            if not line:
                break
            lines.append(line)
            if "model failed to load" in line:
                break
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    lines += err.splitlines(keepends=True) + out.splitlines(keepends=True)
    records = [json.loads(line) for line in lines if line.strip()]
    by_logger = {r["logger"] for r in records}
    assert "uvicorn.error" in by_logger and "backend.model" in by_logger, records
    [failure] = [r for r in records if r["message"] == "model failed to load"]
    assert failure["level"] == "ERROR" and "no_such_knob" in failure["exc_info"]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
