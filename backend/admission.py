"""Who gets to predict: a bounded queue in front of the model, and a per-client rate limit.

Predictions run in their own thread pool (:attr:`PredictGate.limiter`), apart from the control
plane (/health, /setup, /webhook), so a slow image host or a pile of batches can never make
Label Studio's 1 s webhook wait. At most ``concurrency`` predictions run and ``queue`` more wait;
beyond that the answer is 503 with ``Retry-After`` at once, not a wait past Label Studio's
timeout. Each client (by address) also gets a token bucket: ``rate`` requests per minute with
bursts of ``burst``; over it, 429 with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Iterator

import anyio
from fastapi import HTTPException

#: Clients remembered by the rate limiter; the least recently seen are forgotten first.
MAX_CLIENTS = 10_000


class Refused(HTTPException):
    """503 (queue full) or 429 (rate limit), with ``Retry-After`` in whole seconds."""

    def __init__(self, status: int, detail: str, retry_after: float) -> None:
        super().__init__(status, detail, {"Retry-After": str(max(1, math.ceil(retry_after)))})


class PredictGate:
    """Admission for /predict; used from the event loop only (no locks needed)."""

    def __init__(self, concurrency: int, queue: int, retry_after: float = 5.0) -> None:
        self.concurrency = max(1, concurrency)
        self.capacity = self.concurrency + max(0, queue)
        self.retry_after = retry_after
        self.admitted = 0  # running + waiting
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The prediction threads' limiter (made in the event loop, on first use)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        return self._limiter

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self.admitted >= self.capacity:
            raise Refused(
                503,
                f"busy: {self.concurrency} predictions running and "
                f"{self.capacity - self.concurrency} waiting; retry later",
                self.retry_after,
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1


class RateLimiter:
    """Token buckets per client: ``rate`` per minute, ``burst`` at once; rate 0 turns it off."""

    def __init__(self, rate_per_minute: float, burst: int) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = max(1, burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, client: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise Refused(429, "too many /predict requests from this client", wait)
        self._buckets[client] = (tokens - 1.0, now)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
