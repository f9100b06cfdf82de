"""Session fixtures for end-to-end runs: a real Label Studio, an image server and the backend.

Each server is a real process (or thread) on 127.0.0.1 with its own port and temp dir.
Label Studio lives in ``.venv-ls`` (``scripts/install_labelstudio.sh``) since it pins other deps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.label_studio_launch import LS_BIN, REPO, claim, finish, launch, restore_priority
from tests.processes import free_port
from tests.processes import stop_process_group as stop_process

INSTALL_HINT = "bash scripts/install_labelstudio.sh"
LS_START_TIMEOUT = 180.0
BACKEND_START_TIMEOUT = 120.0


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note when there is none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float,
    proc: subprocess.Popen[bytes],
    name: str,
    log: Path,
    interval: float = 0.5,
) -> Any:
    """Poll ``check`` until it returns a truthy value; fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"{name} exited with code {proc.returncode} during start-up; "
                f"log {log}:\n{log_tail(log)}"
            )
        try:
            value = check()
        except (httpx.HTTPError, ValueError) as exc:
            value, last_error = None, exc
        if value:
            return value
        time.sleep(interval)
    pytest.fail(
        f"{name} did not come up in {timeout:.0f} s (last error: {last_error!r}); "
        f"log {log}:\n{log_tail(log)}"
    )


@dataclass
class LabelStudioServer:
    url: str
    token: str
    client: Any  # label_studio_sdk.LabelStudio
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    @property
    def headers(self) -> dict[str, str]:
        return _token_header(self.token)


def _token_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A fresh Label Studio 1.23 on a free loopback port, with a legacy API token."""
    if not LS_BIN.exists():
        message = f"Label Studio is not installed in .venv-ls; run: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from label_studio_sdk import LabelStudio

    # Started right after collection when the run has labelstudio tests (tests/conftest.py).
    launched = claim() or launch(tmp_path_factory.mktemp("label_studio"))
    restore_priority(launched)
    url, token, proc, log_path = launched.url, launched.token, launched.process, launched.log_path
    try:
        with httpx.Client(timeout=5.0) as http:

            def ready() -> bool:
                if http.get(f"{url}/health").status_code != 200:
                    return False
                # The env-made user and its legacy token must be usable too.
                whoami = http.get(f"{url}/api/current-user/whoami", headers=_token_header(token))
                return whoami.status_code == 200

            wait_for(ready, timeout=LS_START_TIMEOUT, proc=proc, name="Label Studio", log=log_path)
        client = LabelStudio(base_url=url, api_key=token, timeout=120.0, max_retries=0)
        yield LabelStudioServer(url, token, client, proc, log_path, launched.data_dir)
    finally:
        finish(launched)


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        self.requests.append(self.path)


@dataclass
class ImageServer:
    url: str
    root: Path
    #: Paths of the GET/HEAD requests served so far, in order.
    requests: list[str] = field(default_factory=list)

    def add(self, name: str, data: bytes) -> str:
        """Store ``data`` as ``name`` and return its URL."""
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    """A static file server on 127.0.0.1 for task images given as http:// URLs."""
    root = tmp_path_factory.mktemp("images")
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="image-server", daemon=True)
    thread.start()
    try:
        yield ImageServer(f"http://127.0.0.1:{server.server_address[1]}", root, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class BackendServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    model_dir: Path

    @property
    def events_path(self) -> Path:
        return self.model_dir / "events" / "webhook.jsonl"

    def events(self) -> list[dict[str, Any]]:
        """The webhook events the backend has stored so far."""
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def log_tail(self, lines: int = 60) -> str:
        return f"backend log {self.log_path}:\n{log_tail(self.log_path, lines)}"

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/health", timeout=5.0)
        response.raise_for_status()
        return dict(response.json())


# Inherited names that would change how the backend behaves; the fixture sets its own.
_BACKEND_ENV_DROP = (
    "HOST",
    "PORT",
    "WORKERS",
    "THREADS",
    "MODEL_DIR",
    "LOG_LEVEL",
    "BASIC_AUTH_USER",
    "BASIC_AUTH_PASS",
    "LOCAL_FILES_DOCUMENT_ROOT",
    "REDIS_URL",
)


@pytest.fixture(scope="session")
def backend(
    label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendServer]:
    """``python -m backend`` as a real process, with the tiny preset and random weights."""
    root = tmp_path_factory.mktemp("backend")
    model_dir, home = root / "model_dir", root / "clipsam_home"
    model_dir.mkdir()
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _BACKEND_ENV_DROP and not k.startswith(("CLIPSAM_", "LABEL_STUDIO_"))
    }
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        CLIPSAM_PRESET="tiny",
        MODEL_DIR=str(model_dir),
        LABEL_STUDIO_URL=label_studio.url,
        LABEL_STUDIO_API_KEY=label_studio.token,
        CLIPSAM_ALLOWED_HOSTS="127.0.0.1",
        CLIPSAM_DEFAULT_CATEGORY="widget",
        # Every image gets the "Defective" verdict: deterministic with random weights.
        CLIPSAM_VERDICT_THRESHOLD="0.0",
        # Random tiny weights peak near 0.44 on these images, under the default tau 0.5.
        CLIPSAM_CONFIG=json.dumps({"tau": 0.4, "weights": "random"}),
        # The embedded Redis and in-process worker; training only when Label Studio asks.
        CLIPSAM_RETRAIN_EVERY="1000",
        CLIPSAM_RETRAIN_EPOCHS="12",
        # One promotion per retrain: the test follows one new model_version through Label
        # Studio (early promotion is tested in tests/correction_loop/test_retrain.py).
        CLIPSAM_RETRAIN_PROMOTE_EARLY="0",
        CLIPSAM_RELOAD_POLL="1",
        LOG_LEVEL="DEBUG",
        CLIPSAM_OFFLINE="1",
        CLIPSAM_HOME=str(home),
        PYTHONUNBUFFERED="1",
    )
    log_path = root / "backend.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(timeout=5.0) as http:

            def up() -> bool:
                response = http.get(f"{url}/health")
                return response.status_code == 200 and response.json().get("status") == "UP"

            wait_for(up, timeout=BACKEND_START_TIMEOUT, proc=proc, name="backend", log=log_path)
        yield BackendServer(url, proc, log_path, model_dir)
    finally:
        stop_process(proc)


def connected_project(
    ls: Any, backend: BackendServer, title: str, config: str, tasks: list[dict[str, Any]],
    interactive: bool = False,
) -> tuple[int, list[int], Any]:  # fmt: skip
    """A new project with ``tasks`` imported and this backend connected as its model:
    (project id, task ids in order, the ML backend record)."""
    project = ls.projects.create(title=title, label_config=config)
    assert project.id is not None
    imported = ls.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True)
    assert imported.task_ids is not None and len(imported.task_ids) == len(tasks), imported
    ml = ls.ml.create(project=project.id, url=backend.url, title="ClipSAM",
                      is_interactive=interactive)  # fmt: skip
    assert ml.state == "CO" and ml.id is not None, f"not connected: {ml}\n{backend.log_tail()}"
    return project.id, list(imported.task_ids), ml


def retrieve_predictions(
    ls: Any, backend: BackendServer, project_id: int, task_ids: list[int], timeout: float
) -> dict[int, list[Any]]:
    """Label Studio's "Retrieve predictions" on the whole project; each task's stored
    predictions once every task has one (fails, with the backend's log, at the timeout)."""
    ls.actions.create(id="retrieve_tasks_predictions", project=project_id,
                      selected_items={"all": True, "excluded": []})  # fmt: skip
    predictions: dict[int, list[Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        predictions = {t: ls.predictions.list(task=t) for t in task_ids}
        if all(predictions.values()):
            break
        time.sleep(1.0)
    missing = [t for t, p in predictions.items() if not p]
    assert not missing, f"no prediction for tasks {missing}\n{backend.log_tail()}"
    return predictions
