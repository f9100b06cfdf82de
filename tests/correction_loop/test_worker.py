"""One worker entry point for every queue: retraining by default, pre-labelling on request."""

from __future__ import annotations

from pathlib import Path

from rq import Queue

from correction_loop import keys
from correction_loop.redis_conn import connect, release
from correction_loop.worker import main


def test_the_worker_works_the_queue_it_is_given(tmp_path: Path) -> None:
    client = connect(None, tmp_path)
    try:
        retrain = Queue(keys.RETRAIN_QUEUE, connection=client)
        prelabel = Queue(keys.PRELABEL_QUEUE, connection=client)
        on_retrain = retrain.enqueue("math.sqrt", 9)
        on_prelabel = prelabel.enqueue("math.sqrt", 4)

        assert main(["--queue", keys.PRELABEL_QUEUE, "--burst", "--model-dir", str(tmp_path)]) == 0
        assert on_prelabel.get_status(refresh=True) == "finished"
        assert on_prelabel.return_value() == 2.0
        assert on_retrain.get_status(refresh=True) == "queued"  # not its queue

        assert main(["--burst", "--model-dir", str(tmp_path)]) == 0  # the default: retraining
        assert on_retrain.return_value() == 3.0
    finally:
        release(client)
