"""The README's serve command, from a fresh clone: /health, then a /predict, within minutes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.processes import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="defect" toName="image"><Label value="Defect"/></BrushLabels>
<Choices name="verdict" toName="image"><Choice value="Good"/><Choice value="Defective"/></Choices>
</View>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to clone")
def test_serve_script_in_a_fresh_clone_answers_health_and_predict(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    for name in ("scripts/serve.sh", "requirements.txt"):  # this checkout's, committed or not
        shutil.copy(REPO / name, clone / name)
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "part.png")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSAM_", "REDIS_"))}
    env.update(
        CLIPSAM_PRESET="tiny", PORT=str(port), MODEL_DIR=str(tmp_path / "model_dir"),
        LOCAL_FILES_DOCUMENT_ROOT=str(tmp_path), CLIPSAM_HOME=str(tmp_path / "home"),
        CLIPSAM_OFFLINE="1",
        VENV=str(Path(sys.executable).parents[1]),  # the installed venv: pip only checks it
    )  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(["bash", "scripts/serve.sh"], cwd=clone, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).json().get("ready"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        task = {"id": 1, "data": {"image": "/data/local-files/?d=part.png"}}
        response = httpx.post(f"{url}/predict", json={"tasks": [task], "label_config": CONFIG},
                              timeout=120)  # fmt: skip
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["model_version"] == "clipsam-tiny-zero-shot"
        assert [item["type"] for item in result["result"]][-1] == "choices"
        assert (tmp_path / "model_dir" / "redis").is_dir()  # the embedded Redis came up
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
