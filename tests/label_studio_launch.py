"""Starting a real Label Studio process, early when a run will need one.

Label Studio's first start (Django migrations into a fresh database) takes over a minute of one
core. A run that collects ``labelstudio`` tests starts it right after collection, at low CPU
priority, so the start overlaps the tests before the end-to-end ones; the session fixture in
``tests/e2e/conftest.py`` then claims that process and waits for it to answer. Nothing here
depends on pytest.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.processes import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[1]
LS_BIN = REPO / ".venv-ls" / "bin" / "label-studio"
#: CPU priority of an early start: it yields to the tests running meanwhile.
EARLY_NICENESS = 10


@dataclass
class Launched:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    root: Path
    log_path: Path
    data_dir: Path
    temporary: bool = False  # root is a temp folder of its own, removed by :func:`finish`


def launch(root: Path, niceness: int = 0) -> Launched:
    """Start a fresh Label Studio in ``root`` on a free loopback port, with a legacy API token
    (an env-made admin user); it is not yet answering when this returns."""
    home, data = root / "home", root / "data"
    home.mkdir(parents=True)
    data.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(20)
    # Label Studio also reads bare names (HOST, PORT, USERNAME...): start from a clean env.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": "admin@example.com",
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    }
    cmd = [str(LS_BIN), "start", "--internal-host", "127.0.0.1", "--port", str(port),
           "--no-browser"]  # fmt: skip
    log_path = root / "label_studio.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
        )
    return Launched(url, token, proc, root, log_path, data)


def restore_priority(launched: Launched) -> None:
    """Back to normal priority once tests talk to it (lowering niceness may need root: a
    process that may not keeps its low priority, which only slows it)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PGRP, launched.process.pid, 0)


_early: Launched | None = None


def start_early() -> None:
    """Launch one Label Studio now, in a temp folder, at low priority, for :func:`claim`."""
    global _early
    if _early is None and LS_BIN.exists():
        root = Path(tempfile.mkdtemp(prefix="clipsam-label-studio-"))
        _early = launch(root, niceness=EARLY_NICENESS)
        _early.temporary = True


def claim() -> Launched | None:
    """The early-started Label Studio, once (None when none was started). It may have died:
    the caller's wait for it reports its exit code and log."""
    global _early
    launched, _early = _early, None
    return launched


def stop_unclaimed() -> None:
    """End of the run: stop an early start nobody claimed, and remove its folder."""
    launched = claim()
    if launched is not None:
        finish(launched)


def finish(launched: Launched) -> None:
    """Stop it, and remove its folder when it made its own."""
    stop_process_group(launched.process)
    if launched.temporary:
        shutil.rmtree(launched.root, ignore_errors=True)
