"""A head proves itself before it serves: corrupt, NaN and foreign heads never reach a backend,
and a serving head damaged on disk leaves the backend up on the last good one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

import clipsam
from backend.app import create_app
from backend.settings import Settings
from correction_loop.head_files import RegistryError
from correction_loop.registry import ModelRegistry
from correction_loop.registry_cli import main as training_cli
from correction_loop.store import CorrectionStore
from tests.backend.conftest import serve
from tests.faults.harness import Flood, LatencyProbe, events, row
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipeline():
    return clipsam.load_pipeline("tiny", weights="random", use_sam=False)


def _nan_head(pipeline):  # type: ignore[no-untyped-def]
    head = pipeline.new_head(seed=11, kind="umci")
    with torch.no_grad():
        next(head.parameters()).view(-1)[0] = float("nan")
    return head


def _foreign_head(pipeline):  # type: ignore[no-untyped-def]
    head = pipeline.new_head(seed=12, kind="umci")  # tiny dims, claiming ViT-B-16's backbone
    head.backbone_id = "ViT-B-16/openai/224px/quick_gelu/L3-6-9-12"
    return head


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header survives, the weights do not


@pytest.mark.parametrize("damage", ["nan", "corrupt", "foreign"])
def test_promote_refuses_heads_that_cannot_serve(tmp_path, pipeline, damage):
    registry = ModelRegistry(tmp_path / "model_dir")
    good = registry.register(pipeline.new_head(seed=10, kind="umci"), {}, parent=None)
    registry.promote(good.version, "in production")
    if damage == "nan":
        bad = registry.register(_nan_head(pipeline), {}, parent=None)
    elif damage == "foreign":
        bad = registry.register(_foreign_head(pipeline), {}, parent=None)
    else:
        bad = registry.register(pipeline.new_head(seed=13, kind="umci"), {}, parent=None)
        _truncate(bad.path)
    with pytest.raises(RegistryError, match=f"refusing to serve head {bad.version}"):
        registry.promote(bad.version, "by hand", allow_backbone_change=True)
    assert registry.serving().version == good.version
    assert [e["action"] for e in registry.history()].count("promote") == 1  # nothing recorded


def test_the_cli_refuses_a_nan_head(tmp_path, pipeline):
    registry = ModelRegistry(tmp_path / "model_dir")
    bad = registry.register(_nan_head(pipeline), {}, parent=None)
    done = subprocess.run(
        [sys.executable, "-m", "training", "--model-dir", str(tmp_path / "model_dir"),
         "promote", bad.version],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "NaN" in done.stderr, done.stderr
    assert registry.serving() is None


@pytest.mark.slow
def test_a_damaged_serving_head_falls_back_and_promotions_still_land(
    tmp_path, pipeline, embedded_redis, capsys, fault_report
):
    settings = Settings(model_dir=tmp_path / "model_dir", preset="tiny", retrain_every=0,
                        inprocess_worker=False, reload_poll=0.2,
                        pipeline_overrides={"weights": "random", "use_sam": False})  # fmt: skip
    registry = ModelRegistry(settings.model_dir, embedded_redis(settings.model_dir))
    first, second, third = (
        registry.register(pipeline.new_head(seed=s, kind="umci"), {}, parent=None)
        for s in (21, 22, 23)
    )
    registry.promote(first.version, "good")
    registry.promote(second.version, "good")
    _truncate(second.path)  # the disk damaged the serving head after its promotion
    assert training_cli(["--model-dir", str(settings.model_dir), "versions"]) == 0
    assert "fails its check" in capsys.readouterr().out

    app = create_app(settings)  # the real start-up path: backbones, then the serving head
    store = CorrectionStore(embedded_redis(settings.model_dir))
    with serve(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        health = wait_for(lambda: (h := client.get("/health").json())["ready"] and h, 30)
        assert health["head"]["loaded"] == first.version  # the last good head
        assert health["head"]["registry"] == second.version
        assert second.version in health["head"]["fallback"]
        flood = Flood(base, concurrency=8)
        with LatencyProbe(base) as probe:
            flood.send(events(30))
            registry.promote(third.version, "a good head after the damage")
            wait_for(lambda: client.get("/health").json()["head"]["loaded"] == third.version, 20)
        health = client.get("/health").json()
        assert health["head"] == {"loaded": third.version, "registry": third.version,
                                  "fallback": None}  # fmt: skip
        assert health["model_version"] == f"clipsam-tiny-{third.version}"
        registry.rollback()  # skips the damaged head: back to the first
        assert registry.serving().version == first.version
        wait_for(lambda: client.get("/health").json()["head"]["loaded"] == first.version, 20)
        stored = wait_for(lambda: len(store.list_project("3")) == 30 and 30, 30, "the events")
    fault_report(row("serving head damaged on disk (fallback, then promote)", flood.sent,
                     len(flood.acked), stored, len(flood.acked) - stored, probe.latencies,
                     flood.latencies))  # fmt: skip
    assert flood.codes == {200: 30} and max(probe.latencies) < 1.0
