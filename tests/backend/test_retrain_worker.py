"""The retraining worker as its own process: killed mid-training, serving stays; the job recovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq import Queue, SimpleWorker

import clipsam
from backend.metrics import retrain_failures
from clipsam.data import load_mask, make_synthetic_dataset, read_mvtec
from clipsam.heads import load_head
from clipsam.images import load_image
from correction_loop.corrections import correction_from_event
from correction_loop.keys import RETRAIN_QUEUE as QUEUE_NAME
from correction_loop.keys import retrain_alive as alive_key
from correction_loop.registry import ModelRegistry
from correction_loop.scheduler import RetrainPolicy, RetrainScheduler, failure_of
from correction_loop.store import CorrectionStore
from tests.backend.conftest import file_server
from tests.helpers import annotation_event, wait_for
from tests.redis_process import RedisProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_worker_killed_mid_training_leaves_serving_intact(tmp_path, monkeypatch):
    root = make_synthetic_dataset(tmp_path / "data", categories=("widget",), n_good=2,
                                  n_defect=8, seed=5)  # fmt: skip
    redis_server = RedisProcess(tmp_path / "redis").start()
    connection = redis_server.client()
    model_dir = tmp_path / "model_dir"
    store, registry = CorrectionStore(connection), ModelRegistry(model_dir, connection)
    pipeline = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
    served = registry.register(pipeline.new_head(seed=1, kind="umci"), {}, parent=None)
    registry.promote(served.version, "the head in production")
    worker = None
    try:
        with file_server(root) as url:
            for index, sample in enumerate(read_mvtec(root, split="test")):
                mask = load_mask(sample, load_image(sample.image_path).shape[:2])
                link = f"{url}/{sample.image_path.relative_to(root).as_posix()}"
                store.upsert(
                    correction_from_event(annotation_event(index + 1, index + 1, link, mask))
                )
            policy = RetrainPolicy(every=0, heartbeat=1.0)  # handed to the job by the scheduler
            scheduler = RetrainScheduler(connection, store, policy, job_kwargs={
                "model_dir": str(model_dir), "preset": "tiny",
                "pipeline_overrides": {"use_sam": False, "weights": "random"}, "redis_url": redis_server.url,
                "settings": {"allowed_hosts": ["127.0.0.1"]}, "holdout": 0.3,
                "heartbeat_period": policy.heartbeat,
                # A warm start (a UMCI head serves) that does not end before it is killed.
                "warm_epochs": 100_000, "patience": None,
            })  # fmt: skip
            job = scheduler.enqueue("3", "test")
            assert job is not None and scheduler.enqueue("3", "again") is None  # one per project
            worker = subprocess.Popen(
                [sys.executable, "-m", "training.worker", "--redis-url", redis_server.url,
                 "--model-dir", str(model_dir)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            # Training has begun once every image is fetched into the job's image cache.
            wait_for(lambda: len(list((model_dir / "images").glob("*.img"))) == 10, 120, "fetch")
            wait_for(lambda: connection.exists(alive_key("3")), 30, "the job's heartbeat")
            time.sleep(2.0)
            assert job.get_status(refresh=True) == "started"
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)

            assert registry.serving().version == served.version
            assert [v.version for v in registry.versions()] == [served.version]
            # The dead run is recorded, with why: rq's failed registry and /metrics.
            (buried,) = wait_for(lambda: scheduler.reap(), 20, "the dead job to be reaped")
            failed = scheduler.queue.failed_job_registry
            assert failed.get_job_ids() == [buried] and buried.startswith("retrain-3-killed-")
            assert "stopped sending heartbeats" in failure_of(scheduler.queue.fetch_job(buried))[1]
            samples = {(m.name, tuple(s.labels.values())): s.value
                       for m in retrain_failures(scheduler.queue) for s in m.samples}  # fmt: skip
            assert samples[("clipsam_retrain_failures", ("killed",))] == 1
            assert load_head(served.path, pipeline.clip.backbone_id).version == served.version
            assert len(store.list_project("3")) == 10 and store.pending("3") == 10

            # rq still calls the job "started"; its missing heartbeat lets a new one be queued.
            scheduler.job_kwargs["warm_epochs"] = 2
            retry = scheduler.enqueue("3", "after the crash")
            assert retry is not None
            SimpleWorker([Queue(QUEUE_NAME, connection=connection)], connection=connection).work(
                burst=True
            )
            assert retry.get_status(refresh=True) == "finished", retry.latest_result()
            outcome = retry.return_value()
            assert outcome["status"] in ("promoted", "rejected") and outcome["train"] >= 5
            assert len(registry.versions()) == 2
            assert store.pending("3") == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        redis_server.kill()
