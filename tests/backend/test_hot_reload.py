"""Hot reload: a promotion reaches a running backend; requests during swaps never fail or mix."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

import clipsam
from backend.app import create_app
from backend.model import ModelService
from backend.settings import Settings
from correction_loop.head_files import RegistryError
from correction_loop.registry import ModelRegistry
from labelstudio.predictions import verdict_confidence
from tests.backend.conftest import serve
from tests.helpers import LABEL_CONFIG, count_backbone_calls, wait_for
from tests.redis_process import RedisProcess


def test_predictions_during_head_swaps_all_succeed_and_never_mix_heads(
    embedded_redis, tmp_path, image_server
):
    url, folder = image_server
    image = np.random.default_rng(4).integers(0, 256, (72, 88, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "part.png")
    settings = Settings(
        model_dir=tmp_path / "model_dir", preset="tiny", allowed_hosts=("127.0.0.1",),
        default_category="widget", retrain_every=0, inprocess_worker=False, reload_poll=0.2,
    )  # fmt: skip
    registry = ModelRegistry(settings.model_dir, embedded_redis(settings.model_dir))
    # Each head's answer for this image, from an identical (same-seed) pipeline elsewhere.
    reference = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
    expected = {}
    for seed in (1, 2):
        registered = registry.register(reference.new_head(seed, kind="umci"), {}, parent=None)
        reference.load_head(registered.path)
        score = reference.predict([image], "widget")[0].score
        expected[registered.version] = round(verdict_confidence(score, 0.5), 4)  # what it serves
    assert len(set(expected.values())) == 2
    versions = list(expected)
    pipeline = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
    app = create_app(settings, ModelService(settings, loader=lambda: pipeline))
    task = {"id": 1, "data": {"image": f"{url}/part.png"}}
    answers: list[tuple[int, str, float]] = []

    def hammer(client: httpx.Client) -> None:
        for _ in range(20):
            response = client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG})
            body = response.json() if response.status_code == 200 else {"results": [{}]}
            result = body["results"][0]
            answers.append((response.status_code, result.get("model_version", ""),
                            result.get("score", -1.0)))  # fmt: skip

    with serve(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG})
        calls = count_backbone_calls(pipeline)  # the image's features are cached from here on
        threads = [threading.Thread(target=hammer, args=(client,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for index in range(8):
            registry.promote(versions[index % 2], f"swap {index}")
            time.sleep(0.3)
        for thread in threads:
            thread.join()
        final = client.post("/setup", json={"schema": LABEL_CONFIG}).json()["model_version"]

    assert len(answers) == 60 and {status for status, _, _ in answers} == {200}
    served = {}
    for _, model_version, score in answers:
        version = model_version.removeprefix("clipsam-tiny-")
        if version != "zero-shot":  # requests before the first swap landed
            assert score == expected[version], (version, score, expected)
            served[version] = served.get(version, 0) + 1
    assert set(served) == set(versions), served  # both heads served, each with its own answers
    assert final == f"clipsam-tiny-{versions[1]}"
    assert calls["clip_images"] == 0  # only the head reloaded: CLIP never ran again


def test_a_promoted_head_that_does_not_load_leaves_the_old_one_serving(embedded_redis, tmp_path):
    settings = Settings(model_dir=tmp_path / "model_dir", preset="tiny", retrain_every=0,
                        inprocess_worker=False, reload_poll=0.2)  # fmt: skip
    pipeline = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
    registry = ModelRegistry(settings.model_dir, embedded_redis(settings.model_dir))
    good = registry.register(pipeline.new_head(seed=3, kind="umci"), {}, parent=None)
    alien = pipeline.new_head(seed=4, kind="umci")
    alien.backbone_id = "ViT-B-16@someone-else"  # e.g. copied from a deployment of another model
    alien_version = registry.register(alien, {}, parent=None).version
    app = create_app(settings, ModelService(settings, loader=lambda: pipeline))
    with serve(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        registry.promote(good.version, "test")
        wait_for(lambda: pipeline.head.version == good.version, 20)
        with pytest.raises(RegistryError, match="allow_backbone_change"):
            registry.promote(alien_version, "test")  # another backend's head: refused by default
        registry.promote(alien_version, "test", allow_backbone_change=True)
        reloader = app.state.loop.reloader
        wait_for(lambda: alien_version in (reloader.last_error or ""), 20)
        assert "someone-else" in reloader.last_error
        assert pipeline.head.version == good.version
        setup = client.post("/setup", json={"schema": LABEL_CONFIG}).json()
        assert setup["model_version"] == f"clipsam-tiny-{good.version}"


def test_rollbacks_reach_the_backend_down_to_the_training_free_head(embedded_redis, tmp_path):
    settings = Settings(model_dir=tmp_path / "model_dir", preset="tiny", retrain_every=0,
                        inprocess_worker=False, reload_poll=0.2)  # fmt: skip
    pipeline = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
    registry = ModelRegistry(settings.model_dir, embedded_redis(settings.model_dir))
    first, second = (registry.register(pipeline.new_head(seed, kind="umci"), {}, parent=None)
                     for seed in (5, 6))  # fmt: skip
    app = create_app(settings, ModelService(settings, loader=lambda: pipeline))
    with serve(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        wait_for(lambda: client.get("/health").json()["ready"], 20)

        def version() -> str:
            return client.post("/setup", json={"schema": LABEL_CONFIG}).json()["model_version"]

        assert version() == "clipsam-tiny-zero-shot"
        for target in (first.version, second.version):
            registry.promote(target, "test")
            wait_for(lambda target=target: version() == f"clipsam-tiny-{target}", 20)
        registry.rollback()
        wait_for(lambda: version() == f"clipsam-tiny-{first.version}", 20)
        registry.rollback()
        wait_for(lambda: version() == "clipsam-tiny-zero-shot", 20)
        assert pipeline.head.kind == "none"


def test_a_backend_on_another_machine_gets_the_head_through_redis(tmp_path):
    """No shared MODEL_DIR: the pointer and the head file both come from Redis."""
    redis_server = RedisProcess(tmp_path / "redis").start()
    try:
        worker_side = ModelRegistry(tmp_path / "worker_dir", redis_server.client())
        pipeline = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
        head = worker_side.register(pipeline.new_head(seed=7, kind="umci"), {}, parent=None)
        settings = Settings(model_dir=tmp_path / "backend_dir", preset="tiny", retrain_every=0,
                            redis_url=redis_server.url, inprocess_worker=False,
                            reload_poll=0.2)  # fmt: skip
        app = create_app(settings, ModelService(settings, loader=lambda: pipeline))
        with serve(app) as base, httpx.Client(base_url=base, timeout=60) as client:
            wait_for(lambda: client.get("/health").json()["ready"], 20)
            worker_side.promote(head.version, "trained elsewhere")
            wait_for(lambda: pipeline.head.version == head.version, 20)
            setup = client.post("/setup", json={"schema": LABEL_CONFIG}).json()
            assert setup["model_version"] == f"clipsam-tiny-{head.version}"
            assert not (settings.model_dir / "heads" / head.version).exists()
            worker_side.rollback()
            wait_for(lambda: pipeline.head.kind == "none", 20)
    finally:
        redis_server.kill()
