"""The webhook log under write faults: a 200 only for a whole, fsynced record; nothing else.

ENOSPC and EIO are injected at the write (a short write, then the error) and at the fsync;
a real kernel limit (RLIMIT_FSIZE, a file that cannot grow: the same short write and error a
full disk gives) and real SIGKILLs between write and fsync cover what monkeypatching cannot.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from correction_loop.events import EventLog, EventPump
from correction_loop.store import CorrectionStore
from tests.faults.harness import LatencyProbe, aid, events, row
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


class DiskFault:
    """Makes writes (short write, then ``err``) or fsyncs of one file fail while armed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
        self.target = str(target)
        self.write_error: int | None = None
        self.fsync_error: int | None = None
        real_write, real_fsync = os.write, os.fsync

        def write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
            if self.write_error is not None and self._is_target(fd):
                real_write(fd, bytes(data)[: len(data) // 2])  # a torn record reaches the disk
                raise OSError(self.write_error, os.strerror(self.write_error))
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if self.fsync_error is not None and self._is_target(fd):
                raise OSError(self.fsync_error, os.strerror(self.fsync_error))
            real_fsync(fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)

    def _is_target(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}") == self.target
        except OSError:
            return False


def test_enospc_and_eio_leave_the_log_as_it_was(
    backend, embedded_redis, tmp_path, monkeypatch, fault_report
):
    client = backend(corrections=True, retrain_every=0, inprocess_worker=False)
    log = tmp_path / "model_dir" / "events" / "webhook.jsonl"
    fault = DiskFault(monkeypatch, log)
    batch = events(14)
    answers: dict[int, int] = {}
    webhook_latency: list[float] = []

    def post(event: dict) -> None:
        start = time.perf_counter()
        response = client.post("/webhook", json=event)
        answers[aid(event)] = response.status_code
        webhook_latency.append(time.perf_counter() - start)

    with LatencyProbe(str(client.base_url)) as probe:
        for event in batch[:5]:
            post(event)
        size = log.stat().st_size
        fault.write_error = errno.ENOSPC  # a full disk: half a record written, then ENOSPC
        for event in batch[5:8]:
            post(event)
            assert log.stat().st_size == size  # the torn half was cut back at once
        fault.write_error, fault.fsync_error = None, errno.EIO  # written whole, fsync fails
        post(batch[8])
        assert log.stat().st_size == size
        fault.fsync_error = None  # space is back
        for event in batch[9:]:
            post(event)
    acked = sorted(i for i, code in answers.items() if code == 200)
    assert [answers[i] for i in (6, 7, 8)] == [507] * 3 and answers[9] == 503
    assert acked == [1, 2, 3, 4, 5, 10, 11, 12, 13, 14]
    lines = [json.loads(line) for line in log.read_bytes().splitlines()]
    assert [line["payload"]["annotation"]["id"] for line in lines] == acked  # whole lines only

    store = CorrectionStore(embedded_redis(tmp_path / "model_dir"))
    ids = lambda: sorted(c.annotation_id for c in store.list_project("3"))  # noqa: E731
    wait_for(lambda: ids() == acked, 30, "the acknowledged events in Redis")
    time.sleep(1.0)  # an event answered with an error must never show up later
    assert ids() == acked
    assert not (log.parent / "rejected.jsonl").exists()
    lost = len(set(acked) - set(ids()))
    fault_report(row("ENOSPC/EIO at write and fsync", len(batch), len(acked), len(ids()), lost,
                     probe.latencies, webhook_latency))  # fmt: skip
    assert lost == 0 and max(webhook_latency) < 1.0


_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from correction_loop.events import EventLog
    log = EventLog(Path(sys.argv[1]))
    mode = sys.argv[2]
    for i in range(3):
        log.record("ANNOTATION_CREATED", {"annotation": {"id": i + 1}})
    print("acked 3", flush=True)
    real_write = os.write
    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)
    def half_then_die(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])
        die()
    if mode == "mid-write":
        os.write = half_then_die
    else:
        os.fsync = die
    log.record("ANNOTATION_CREATED", {"annotation": {"id": 4}})
    """
)


@pytest.mark.parametrize("moment", ["mid-write", "before-fsync"])
def test_a_process_killed_while_writing_leaves_a_log_that_repairs(tmp_path, moment, fault_report):
    model_dir = tmp_path / "model_dir"
    child = subprocess.run([sys.executable, "-c", _CHILD, str(model_dir), moment], cwd=REPO,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert child.returncode == -9 and "acked 3" in child.stdout, child.stderr
    raw = (model_dir / "events" / "webhook.jsonl").read_bytes()
    assert raw.endswith(b"\n") == (moment == "before-fsync")

    log = EventLog(model_dir)  # a restart: the start-up scan cuts a torn tail
    assert (log.repaired_bytes > 0) == (moment == "mid-write")
    for i in (5, 6):
        log.record("ANNOTATION_CREATED", {"annotation": {"id": i}})
    applied: list[int] = []
    pump = EventPump(log, lambda payload: applied.append(payload["annotation"]["id"]))
    assert pump.run_once() == len(applied)
    assert not pump.rejected_path.exists()  # no record was merged with a fragment
    # Event 4 was never answered (the process died): whole on disk → kept, torn → gone.
    expected = [1, 2, 3, 4, 5, 6] if moment == "before-fsync" else [1, 2, 3, 5, 6]
    assert applied == expected
    acked = [1, 2, 3, 5, 6]
    fault_report(row(f"process SIGKILLed {moment}", 6, len(acked), len(applied),
                     len(set(acked) - set(applied)), [], []))  # fmt: skip


_FULL = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from correction_loop.events import EventLog
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, like ENOSPC
    log = EventLog(Path(sys.argv[1]))
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, hard))  # the "disk" holds 3000 bytes
    answers = {}
    for i in range(1, 41):
        if i == 31:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space is back
        try:
            log.record("ANNOTATION_CREATED", {"annotation": {"id": i}, "pad": "x" * 200})
            answers[i] = "ok"
        except OSError as exc:
            answers[i] = exc.errno
    print(json.dumps(answers))
    """
)


def test_a_file_that_cannot_grow_refuses_whole_records_and_recovers(tmp_path, fault_report):
    """The kernel itself writes short, then fails (RLIMIT_FSIZE): no monkeypatching."""
    model_dir = tmp_path / "model_dir"
    child = subprocess.run([sys.executable, "-c", _FULL, str(model_dir)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert child.returncode == 0, child.stderr
    answers = {int(k): v for k, v in json.loads(child.stdout).items()}
    acked = [i for i, v in answers.items() if v == "ok"]
    refused = [i for i, v in answers.items() if v != "ok"]
    assert refused and all(v == errno.EFBIG for i, v in answers.items() if i in refused)
    assert set(range(31, 41)) <= set(acked)
    raw = (model_dir / "events" / "webhook.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    applied: list[int] = []
    pump = EventPump(EventLog(model_dir), lambda p: applied.append(p["annotation"]["id"]))
    pump.run_once()
    assert applied == acked and not pump.rejected_path.exists()
    fault_report(row("file cannot grow (RLIMIT_FSIZE, real short write)", 40, len(acked),
                     len(applied), len(set(acked) - set(applied)), [], []))  # fmt: skip
