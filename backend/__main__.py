"""``python -m backend``: serve the ML backend with uvicorn (settings from the environment).

``LOG_FORMAT=json`` logs one JSON object per line (for log shippers); the default stays human.
"""

from __future__ import annotations

import argparse

import uvicorn

from backend.settings import Settings
from clipsam.logging_setup import configure_logging, json_log_config, json_logs


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m backend",
        description="Serve the ClipSAM Label Studio ML backend with uvicorn. Every setting comes "
        "from the environment (README: 'Serve Label Studio'), for example HOST, PORT, WORKERS, "
        "THREADS, MODEL_DIR, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, CLIPSAM_PRESET, "
        "CLIPSAM_HEAD, REDIS_URL, LOG_LEVEL and LOG_FORMAT=json.",
    )


def main(argv: list[str] | None = None) -> int:
    _parser().parse_args(argv)  # no options: --help, and unknown arguments are refused
    settings = Settings.from_env()
    if json_logs():
        log_config = json_log_config(settings.log_level)  # uvicorn applies it in each process
    else:
        configure_logging(settings.log_level)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
