"""``python -m training.worker``: the one rq worker entry point, for every queue (CUDA when
present): retraining jobs (``clipsam-retrain``) and pre-labelling chunks (``clipsam-prelabel``,
which ``python -m backend.prelabel --worker`` starts through :func:`run_worker` too).

Jobs run in the worker process itself (``SimpleWorker``: no fork after CUDA is initialised), so
the pipeline a first job loads stays warm for the next. ``run_in_thread`` runs a retraining
worker inside the backend for the one-command embedded setup.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.timeouts import TimerDeathPenalty

from clipsam.logging_setup import configure_logging
from correction_loop import keys
from correction_loop.redis_conn import connect, release

logger = logging.getLogger(__name__)

#: The queues a worker can work: retraining first (the default), then pre-labelling.
QUEUES = (keys.RETRAIN_QUEUE, keys.PRELABEL_QUEUE)


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


def run_worker(
    queues: Sequence[str], redis_url: str | None, model_dir: Path, burst: bool = False
) -> int:
    """An rq worker on ``queues`` in this process until stopped (or, with ``burst``, until they
    are empty); this process's Redis client is released at the end (an embedded server it
    started stops, saving).

    Jobs run in the worker process itself (``SimpleWorker``: no fork after CUDA is initialised),
    so a model a job loads stays warm for the next (:mod:`clipsam.pipeline_cache`).
    """
    from clipsam.precision import resolve_device

    connection = connect(redis_url, model_dir)
    try:
        worker = SimpleWorker(
            [Queue(name, connection=connection) for name in queues], connection=connection
        )
        logger.info("worker on %s for %s", resolve_device("auto"), ", ".join(queues))
        worker.work(burst=burst, with_scheduler=False)
    finally:
        release(connection)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.worker",
        description="Run jobs from rq queues: retraining (clipsam-retrain, the default) and "
        "pre-labelling (clipsam-prelabel, also python -m backend.prelabel --worker).",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="Redis with the queue (default: $REDIS_URL, else the embedded one)",
    )
    default_dir = Path(os.environ.get("MODEL_DIR", "model_dir"))
    parser.add_argument("--model-dir", type=Path, default=default_dir)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument(
        "--queue",
        action="append",
        choices=QUEUES,
        metavar="NAME",
        help=f"a queue to work (repeatable; {' or '.join(QUEUES)}; default: {QUEUES[0]})",
    )
    args = parser.parse_args(argv)
    configure_logging()
    return run_worker(args.queue or [QUEUES[0]], args.redis_url, args.model_dir, args.burst)


if __name__ == "__main__":
    raise SystemExit(main())
