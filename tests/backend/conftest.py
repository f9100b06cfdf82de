"""Backend fixtures: a real uvicorn server per test app, real image servers, loopback only."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

import clipsam
from backend.app import create_app
from backend.model import ModelService
from backend.settings import Settings
from correction_loop.redis_conn import connect, release
from tests.helpers import BlobHead, loopback_only


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A safety net: nothing in these tests may connect anywhere but loopback."""
    loopback_only(monkeypatch)


@pytest.fixture(scope="module")
def blob_pipeline():
    """Tiny pipeline whose head marks two fixed blobs: deterministic regions for every image.

    SAM is off: a random-weight SAM's masks would make the regions depend on noise.
    """
    pipeline = clipsam.load_pipeline("tiny", weights="random", head="umci", use_sam=False)
    pipeline.set_head(BlobHead(pipeline.clip.backbone_id, pipeline.clip.grid, [(3, 3), (10, 9)]))
    return pipeline


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1; yields the base URL."""

    def handler(*args, **kwargs):  # type: ignore[no-untyped-def]
        return _Files(*args, directory=str(folder), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serves files from a temp folder on 127.0.0.1; yields (base URL, folder)."""
    folder = tmp_path / "images"
    folder.mkdir()
    with file_server(folder) as url:
        yield url, folder


@contextmanager
def serve(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Run ``app`` under a real uvicorn server on a free loopback port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def backend(tmp_path: Path, blob_pipeline):
    """Factory: start a backend with settings overrides; yields an httpx client on it."""
    stack = []

    def start(loader=None, **overrides) -> httpx.Client:  # type: ignore[no-untyped-def]
        base = Settings(model_dir=tmp_path / "model_dir", preset="tiny",
                        allowed_hosts=("127.0.0.1",), default_category="widget",
                        corrections=False)  # fmt: skip
        settings = dataclasses.replace(base, **overrides)
        model = ModelService(settings, loader=loader or (lambda: blob_pipeline))
        context = serve(create_app(settings, model))
        url = context.__enter__()
        client = httpx.Client(base_url=url, timeout=60)
        stack.append((context, client))
        return client

    yield start
    for context, client in stack:
        client.close()
        context.__exit__(None, None, None)


@pytest.fixture
def embedded_redis():
    """Factory: a client of MODEL_DIR's embedded Redis, released (stopped if last) at teardown."""
    clients = []

    def open_client(model_dir: Path):  # type: ignore[no-untyped-def]
        clients.append(connect(None, model_dir))
        return clients[-1]

    yield open_client
    for client in clients:
        release(client)
