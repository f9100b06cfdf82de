"""The control plane never waits behind predictions: slow image hosts, full queues, loading."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
from PIL import Image

from correction_loop.store import CorrectionStore
from tests.faults.harness import Flood, LatencyProbe, events, row
from tests.helpers import LABEL_CONFIG, wait_for


@contextmanager
def slow_image_server(delay: float) -> Iterator[str]:
    """127.0.0.1 only: every image takes ``delay`` seconds to arrive."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 128, dtype=np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_slow_image_host_and_a_full_queue_never_delay_health_setup_or_webhook(
    backend, embedded_redis, tmp_path, fault_report
):
    client = backend(corrections=True, retrain_every=0, inprocess_worker=False, threads=2,
                     predict_queue=3, predict_rate=0)  # fmt: skip
    base = str(client.base_url)
    codes: Counter = Counter()
    retry_after: set[str] = set()

    def predict(index: int) -> None:
        task = {"id": index, "data": {"image": f"{images}/{index}.png"}}
        with httpx.Client(base_url=base, timeout=60) as c:
            response = c.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG})
        codes[response.status_code] += 1
        if response.status_code == 503:
            retry_after.add(response.headers.get("retry-after", ""))

    batch = events(40)
    flood = Flood(base, concurrency=4)
    setup_latency: list[float] = []
    with slow_image_server(2.0) as images, LatencyProbe(base) as probe, \
            ThreadPoolExecutor(9) as pool:  # fmt: skip
        futures = [pool.submit(predict, i) for i in range(9)]  # 2 run, 3 wait, 4 refused
        time.sleep(0.5)  # the predictions are waiting on the slow host now
        for chunk in range(4):
            flood.send(batch[chunk * 10 : (chunk + 1) * 10])
            start = time.perf_counter()
            assert client.post("/setup", json={"schema": LABEL_CONFIG}).status_code == 200
            setup_latency.append(time.perf_counter() - start)
            time.sleep(0.5)
        for future in futures:
            future.result()
    assert codes == {200: 5, 503: 4}, codes
    assert retry_after and all(value.isdigit() for value in retry_after)
    store = CorrectionStore(embedded_redis(tmp_path / "model_dir"))
    stored = wait_for(lambda: len(store.list_project("3")) == 40 and 40, 30, "40 corrections")
    fault_report(row("slow image host (2 s), 9 /predict on 2 slots + 3 queued", flood.sent,
                     len(flood.acked), stored, len(flood.acked) - stored, probe.latencies,
                     flood.latencies))  # fmt: skip
    assert flood.codes == {200: 40}
    assert max(probe.latencies) < 1.0 and max(flood.latencies) < 1.0 and max(setup_latency) < 1.0


def test_health_and_webhook_answer_while_the_model_loads(
    backend, blob_pipeline, tmp_path, fault_report
):
    release = threading.Event()

    def slow_loader():  # type: ignore[no-untyped-def]
        release.wait(30)
        return blob_pipeline

    client = backend(loader=slow_loader, model_wait_seconds=5)
    base = str(client.base_url)
    flood = Flood(base, concurrency=4)
    waiting = ThreadPoolExecutor(4)
    pending = [
        waiting.submit(httpx.post, f"{base}/predict", timeout=30,
                       json={"tasks": [{"id": 1, "data": {"image": "x"}}],
                             "label_config": LABEL_CONFIG})
        for _ in range(4)
    ]  # fmt: skip
    with LatencyProbe(base) as probe:
        flood.send(events(20))
        time.sleep(0.5)
    release.set()
    assert all(f.result().status_code == 200 for f in pending)
    waiting.shutdown()
    log = (tmp_path / "model_dir" / "events" / "webhook.jsonl").read_bytes().splitlines()
    stored = {json.loads(line)["payload"]["annotation"]["id"] for line in log}
    fault_report(row("model still loading, 4 /predict waiting", flood.sent, len(flood.acked),
                     len(stored), len(flood.acked - stored), probe.latencies,
                     flood.latencies))  # fmt: skip
    assert stored == flood.acked
    assert flood.codes == {200: 20} and max(probe.latencies) < 1.0 and max(flood.latencies) < 1.0
