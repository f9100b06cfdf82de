"""One logging setup for every entry point: human lines, or JSON with ``LOG_FORMAT=json``.

``LOG_FORMAT=json`` logs one JSON object per line (for log shippers); the default stays human.
``LOG_LEVEL`` sets the level unless the caller passes one. Neutral on purpose (no HTTP, no
Redis), so every layer's command line can use it without importing a layer above it.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: a traceback stays inside its record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def json_logs() -> bool:
    """``LOG_FORMAT=json``: one JSON object per line (every entry point alike)."""
    return os.environ.get("LOG_FORMAT", "").strip().lower() == "json"


def log_level(default: str = "INFO") -> str:
    """``LOG_LEVEL`` in upper case, else ``default``."""
    return (os.environ.get("LOG_LEVEL", "").strip() or default).upper()


def json_log_config(level: str) -> dict[str, Any]:
    """dictConfig for uvicorn to apply in every process (with WORKERS > 1 too): all to root."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # By name: spawned worker processes import it.
        "formatters": {"json": {"()": "clipsam.logging_setup.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        # uvicorn's own loggers: no handlers of their own, so they reach root's JSON handler.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(level: str | None = None) -> None:
    """Configure the root logger once: ``level`` (default ``LOG_LEVEL``, else INFO), and
    human lines or, with ``LOG_FORMAT=json``, one JSON object per line."""
    chosen = (level or log_level()).upper()
    if json_logs():
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=chosen, handlers=[handler])
    else:
        logging.basicConfig(level=chosen, format=HUMAN_FORMAT)
