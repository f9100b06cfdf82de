"""The webhook hand-off point: accept an event in well under Label Studio's 1 s, never lose it.

Events are appended to a JSON-lines log under ``MODEL_DIR/events/`` (flushed and fsynced) before
the webhook answers; consumers (the corrections store) read from there or are called here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class EventLog:
    """Append-only, fsynced JSON lines: one line per accepted webhook event."""

    def __init__(self, model_dir: Path) -> None:
        self.path = model_dir / "events" / "webhook.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, action: str, payload: dict[str, Any]) -> None:
        line = json.dumps({"received_at": time.time(), "action": action, "payload": payload})
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        logger.info("webhook %s stored (%d bytes)", action, len(line))
