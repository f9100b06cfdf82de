"""``python -m backend``: serve the ML backend with uvicorn (settings from the environment).

``LOG_FORMAT=json`` logs one JSON object per line (for log shippers); the default stays human.
"""

from __future__ import annotations

import logging

import uvicorn

from backend.settings import Settings
from clipsam.logging_setup import HUMAN_FORMAT, json_log_config, json_logs


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
