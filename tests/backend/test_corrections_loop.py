"""The whole loop in one backend: webhook corrections → Redis → retrain → promotion → hot reload.

One backend with the embedded Redis and the in-process worker (the one-command default) is
corrected like a person would in Label Studio: ~40 synthetic images of one category, served over
local HTTP, each with its true mask as a brush annotation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import clipsam
from backend.app import create_app
from backend.model import ModelService
from backend.settings import Settings
from clipsam.data import load_mask, make_synthetic_dataset, read_mvtec
from clipsam.images import load_image
from correction_loop.registry import ModelRegistry
from correction_loop.retrain import is_held_out
from correction_loop.store import CorrectionStore
from tests.backend.conftest import file_server, serve
from tests.helpers import LABEL_CONFIG, annotation_event, count_backbone_calls, wait_for

PROJECT = 3
HOLDOUT = 0.2


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    """44 images (36 with defects) served over HTTP, with their Label Studio annotations."""
    root = make_synthetic_dataset(
        tmp_path_factory.mktemp("loop_data"),
        categories=("widget",), n_good=8, n_defect=36, seed=3,
    )  # fmt: skip
    samples = read_mvtec(root, split="test")
    with file_server(root) as url:
        items = []
        for index, sample in enumerate(samples):
            image = load_image(sample.image_path)
            mask = load_mask(sample, image.shape[:2])
            link = f"{url}/{sample.image_path.relative_to(root).as_posix()}"
            event = annotation_event(500 + index, 100 + index, link, mask, project=PROJECT)
            items.append({"image": image, "mask": mask, "event": event, "aid": 500 + index})
        yield items


@pytest.fixture(scope="module")
def loop(tmp_path_factory, corrected):
    """A backend on the embedded default; the retrain fires on the 44th correction."""
    pipeline = clipsam.load_pipeline(
        "tiny", weights="random", use_sam=False
    )  # the training-free head serves
    settings = Settings(
        model_dir=tmp_path_factory.mktemp("loop") / "model_dir", preset="tiny",
        allowed_hosts=("127.0.0.1",), default_category="widget",
        retrain_every=len(corrected), retrain_epochs=12, retrain_holdout=HOLDOUT, reload_poll=0.5,
        retrain_patience=0,  # the gate alone judges here (early stopping: test_retrain.py)
    )  # fmt: skip
    app = create_app(settings, ModelService(settings, loader=lambda: pipeline))
    import httpx

    with serve(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield {"client": client, "pipeline": pipeline, "app": app, "settings": settings}


def _model_version(client) -> str:
    return client.post("/setup", json={"project": str(PROJECT), "schema": LABEL_CONFIG}).json()[
        "model_version"
    ]


def _held_out_auroc(pipeline, items) -> float:
    predictions = pipeline.predict([i["image"] for i in items], "widget")
    maps = np.concatenate([p.anomaly_map.ravel() for p in predictions])
    masks = np.concatenate([i["mask"].ravel() for i in items])
    return float(roc_auc_score(masks, maps))


def _predict(client, item) -> dict:
    task = {"id": item["event"]["task"]["id"], "data": item["event"]["task"]["data"]}
    response = client.post("/predict", json={"tasks": [task], "label_config": LABEL_CONFIG})
    assert response.status_code == 200
    return response.json()["results"][0]


@pytest.mark.slow
def test_corrections_retrain_promote_and_hot_reload(loop, corrected):
    client, pipeline = loop["client"], loop["pipeline"]
    held_out = [i for i in corrected if is_held_out(i["aid"], HOLDOUT)]
    assert sum(i["mask"].any() for i in held_out) >= 3, "the held-out slice needs defects"
    wait_for(lambda: client.get("/health").json()["ready"], what="the model")
    first_version = _model_version(client)
    before = _held_out_auroc(pipeline, held_out)
    first_prediction = _predict(client, held_out[0])
    assert first_prediction["model_version"] == first_version

    for item in corrected:
        assert client.post("/webhook", json=item["event"]).json() == {"status": "ok"}

    new_version = wait_for(
        lambda: (v := _model_version(client)) != first_version and v,
        timeout=180,
        what="a promotion",
    )
    registry = ModelRegistry(loop["settings"].model_dir)
    serving = registry.serving()
    assert serving is not None and new_version == f"clipsam-tiny-{serving.version}"
    assert serving.extra["held_out"] == len(held_out)
    assert [e["action"] for e in registry.history()] == ["register", "promote"]
    assert new_version in client.get("/versions").json()["versions"]

    # Only the head reloaded: re-predicting cached images runs neither backbone.
    calls = count_backbone_calls(pipeline)
    after = _held_out_auroc(pipeline, held_out)
    assert calls["clip_images"] == 0
    print(
        f"held-out pixel AUROC {before:.3f} -> {after:.3f} ({serving.metrics['pixel_auroc']:.3f})"
    )
    assert after >= 0.75 and after - before >= 0.15, (before, after)

    second_prediction = _predict(client, held_out[0])
    assert second_prediction["model_version"] == new_version
    assert second_prediction["score"] != first_prediction["score"]

    store = CorrectionStore(loop["app"].state.loop.connection)
    assert len(store.list_project(str(PROJECT))) == len(corrected)
    assert store.pending(str(PROJECT)) == 0


@pytest.mark.slow
def test_a_head_trained_on_wrong_labels_is_not_promoted(loop, corrected):
    client = loop["client"]
    registry = ModelRegistry(loop["settings"].model_dir)
    serving = registry.serving()
    assert serving is not None, "runs after the promotion above"
    # Someone "corrects" every training image by marking the opposite corner instead.
    for item in corrected:
        if is_held_out(item["aid"], HOLDOUT):
            continue
        wrong = np.zeros_like(item["mask"])
        wrong[: wrong.shape[0] // 3, : wrong.shape[1] // 3] = True
        wrong &= ~item["mask"]
        event = annotation_event(
            item["aid"], item["event"]["task"]["id"], item["event"]["task"]["data"]["image"],
            wrong, project=PROJECT, action="ANNOTATION_UPDATED",
        )  # fmt: skip
        assert client.post("/webhook", json=event).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
    rejected = wait_for(
        lambda: [v for v in registry.versions() if v.status == "rejected"],
        timeout=180,
        what="a rejection",
    )
    assert (
        "<" in rejected[0].reason
        and rejected[0].metrics["pixel_auroc"] < serving.metrics["pixel_auroc"]
    )
    assert registry.serving().version == serving.version
    assert _model_version(client) == f"clipsam-tiny-{serving.version}"
    assert Path(rejected[0].path).is_file()  # kept for inspection
