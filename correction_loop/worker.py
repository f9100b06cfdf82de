"""``python -m training.worker``: an rq worker for retraining jobs (CUDA when present).

Jobs run in the worker process itself (``SimpleWorker``: no fork after CUDA is initialised), so
the pipeline a first job loads stays warm for the next. ``run_in_thread`` runs the same worker
inside the backend for the one-command embedded setup.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.timeouts import TimerDeathPenalty

from clipsam.logging_setup import configure_logging
from correction_loop import keys
from correction_loop.redis_conn import connect

logger = logging.getLogger(__name__)


class ThreadWorker(SimpleWorker):
    """A SimpleWorker that can live in a non-main thread (no signal handlers, timer timeouts)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass

    def subscribe(self) -> None:
        """No command channel: its listener thread races rq's teardown; the backend stops us."""

    def unsubscribe(self) -> None:
        pass

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """rq waits for a job forever; wait in short slices so stop() is seen within seconds."""
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=timeout or 1)
            if result is not None:
                return result
        return None

    def stop(self) -> None:
        """Finish the job in hand, then leave at the next queue poll (signals are main-only)."""
        self._stop_requested = True


def run_in_thread(
    connection: Redis, name: str = "clipsam-inprocess"
) -> tuple[ThreadWorker, threading.Thread]:
    # A short TTL keeps the blocking queue poll short, so stop() takes effect within seconds.
    worker = ThreadWorker(
        [Queue(keys.RETRAIN_QUEUE, connection=connection)],
        connection=connection,
        name=f"{name}-{os.getpid()}-{id(connection):x}",
        worker_ttl=16,  # rq polls the queue for ttl - 15 s
    )
    thread = threading.Thread(
        target=worker.work, kwargs={"with_scheduler": False}, name="retrain-worker", daemon=True
    )
    thread.start()
    logger.info("in-process retraining worker started")
    return worker, thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.worker",
        description="Run retraining jobs from the clipsam-retrain queue.",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="Redis with the queue (default: $REDIS_URL, else the embedded one)",
    )
    default_dir = Path(os.environ.get("MODEL_DIR", "model_dir"))
    parser.add_argument("--model-dir", type=Path, default=default_dir)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    configure_logging()
    connection = connect(args.redis_url, args.model_dir)
    worker = SimpleWorker([Queue(keys.RETRAIN_QUEUE, connection=connection)], connection=connection)
    import torch

    logger.info("worker on %s", "cuda" if torch.cuda.is_available() else "cpu")
    worker.work(burst=args.burst, with_scheduler=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
