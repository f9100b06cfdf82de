"""``python -m backend``: serve the ML backend with uvicorn (settings from the environment).

``LOG_FORMAT=json`` logs one JSON object per line (for log shippers); the default stays human.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

import uvicorn

from backend.settings import Settings

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


def json_log_config(level: str) -> dict[str, Any]:
    """dictConfig for uvicorn to apply in every process (with WORKERS > 1 too): all to root."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # By name: spawned worker processes import it (``python -m`` runs this as __main__).
        "formatters": {"json": {"()": "backend.__main__.JsonFormatter"}},
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


def json_logs() -> bool:
    """``LOG_FORMAT=json``: one JSON object per line (backend and worker alike)."""
    return os.environ.get("LOG_FORMAT", "").strip().lower() == "json"


def main() -> None:
    settings = Settings.from_env()
    if json_logs():
        log_config = json_log_config(settings.log_level)  # uvicorn applies it in each process
    else:
        logging.basicConfig(level=settings.log_level, format=HUMAN_FORMAT)
        log_config = uvicorn.config.LOGGING_CONFIG  # uvicorn's default, as before
    uvicorn.run(
        "backend.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        log_config=log_config,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # the header block, at the door
    )


if __name__ == "__main__":
    main()
