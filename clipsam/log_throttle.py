"""Recurring warnings (Redis down, a channel lost) logged once per period, not once per try.

An outage must be visible in the logs without burying them: the first warning goes out at once,
repeats within ``every`` seconds are counted and summed into the next one, and the recovery is
logged once.
"""

from __future__ import annotations

import logging
import threading
import time


class ThrottledWarning:
    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        self.logger = logger
        self.every = every
        self._lock = threading.Lock()
        self._last: float | None = None  # when the last warning went out; None: all is well
        self._held = 0
        self.emitted = 0  # warnings actually logged (tests count them)

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.every:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
            self.emitted += 1
        if held:
            message += f" ({held} more like this in the last {self.every:.0f} s)"
        self.logger.warning(message, *args)

    def recovered(self, message: str, *args: object) -> None:
        """Log ``message`` (info) once if a warning was logged since the last recovery."""
        with self._lock:
            if self._last is None:
                return
            self._last, self._held = None, 0
        self.logger.info(message, *args)
