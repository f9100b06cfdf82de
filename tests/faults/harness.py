"""Fault-injection helpers: floods of webhook events, latency probes, and the counts to assert.

Every fault test sends distinct annotation ids, so "stored" is a count of ids in Redis and
"lost" is what was acknowledged (200) yet never stored: it must be zero.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np

from tests.helpers import annotation_event


def events(count: int, first: int = 1) -> list[dict]:
    """``count`` webhook events for annotations ``first``.. (every third one a good image)."""
    out = []
    for aid in range(first, first + count):
        mask = np.zeros((24, 32), dtype=bool)
        if aid % 3:
            mask[4:12, 6 + aid % 10 : 16 + aid % 10] = True
        out.append(annotation_event(aid, 100_000 + aid, f"http://127.0.0.1:9/{aid}.png", mask))
    return out


def aid(event: dict) -> int:
    return int(event["annotation"]["id"])


@dataclass
class Flood:
    """Posts events to /webhook at a given concurrency; records codes and latencies."""

    base_url: str
    concurrency: int = 16
    timeout: float = 30.0
    send_path: str = "/webhook"
    acked: set[int] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)
    codes: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, batch: list[dict]) -> None:
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client, \
                ThreadPoolExecutor(self.concurrency) as pool:  # fmt: skip
            list(pool.map(lambda e: self._one(client, e), batch))

    def _one(self, client: httpx.Client, event: dict) -> None:
        start = time.perf_counter()
        try:
            code = client.post(self.send_path, json=event).status_code
        except httpx.HTTPError:
            code = 0  # no answer: not acknowledged
        with self._lock:
            self.latencies.append(time.perf_counter() - start)
            self.codes[code] += 1
            (self.acked if code == 200 else self.refused).add(aid(event))

    @property
    def sent(self) -> int:
        return sum(self.codes.values())


class LatencyProbe:
    """GETs ``path`` every ``interval`` s in a thread while the fault runs; keeps the latencies."""

    def __init__(self, base_url: str, path: str = "/health", interval: float = 0.05) -> None:
        self.base_url, self.path, self.interval = base_url, path, interval
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    ok = client.get(self.path).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - start)
                self.failures += not ok
                self._stop.wait(self.interval)


def worst(latencies: list[float]) -> float:
    return max(latencies, default=0.0)


def row(fault: str, sent: int, acked: int, stored: int, lost: int,
        health: list[float], webhook: list[float]) -> dict:  # fmt: skip
    return {"fault": fault, "sent": sent, "acknowledged": acked, "stored": stored, "lost": lost,
            "health_max_s": round(worst(health), 3), "webhook_max_s": round(worst(webhook), 3)}  # fmt: skip
