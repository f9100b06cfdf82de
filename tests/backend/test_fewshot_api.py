"""Good images annotated in Label Studio change the next prediction of their category at once,
through the real webhook path (uvicorn, the embedded Redis, the event pump), with no retrain;
deleting the annotations restores the prediction exactly."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

import clipsam
from clipsam.data.world import render_sample
from tests.helpers import LABEL_CONFIG, annotation_event, wait_for

PROJECT = 3


def _anomaly_score(prediction: dict) -> float:
    """The image anomaly score, carried by the verdict item."""
    (verdict,) = [r for r in prediction["result"] if r["type"] == "choices"]
    return float(verdict["score"])


@pytest.fixture
def served(backend, image_server):
    url, folder = image_server
    links = []
    for index in range(4):
        sample = render_sample("widget", np.random.default_rng([5, index]), (96, 96))
        Image.fromarray(sample.image).save(folder / f"{index}.png")
        links.append(f"{url}/{index}.png")
    pipeline = clipsam.load_pipeline(
        "tiny", weights="random", use_sam=False
    )  # the training-free head serves
    client = backend(loader=lambda: pipeline, corrections=True, retrain_every=1000,
                     inprocess_worker=False, reload_poll=0.5)  # fmt: skip
    return client, links, pipeline


def test_good_annotations_change_the_next_prediction_and_deleting_restores_it(served):
    client, links, pipeline = served

    def predict(category: str = "widget") -> dict:
        task = {"id": 200, "data": {"image": links[0], "category": category}}
        body = {"tasks": [task], "label_config": LABEL_CONFIG, "project": str(PROJECT)}
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        return response.json()["results"][0]

    before, other = predict(), predict("gadget")
    good = np.zeros((96, 96), dtype=bool)
    for index, link in enumerate(links):
        event = annotation_event(700 + index, 200 + index, link, good, project=PROJECT)
        started = time.perf_counter()
        assert client.post("/webhook", json=event).status_code == 200
        assert time.perf_counter() - started < 1.0  # features are computed in the background

    after = wait_for(lambda: (p := predict()) != before and p, 60, "a prediction with the memory")
    assert _anomaly_score(after) < _anomaly_score(before)  # its own patches are in the memory
    assert after["model_version"] == before["model_version"]  # no retrain, no new head
    assert predict("gadget") == other  # another category's prediction is untouched

    defect = np.zeros((96, 96), dtype=bool)
    defect[10:30, 10:30] = True
    update = annotation_event(700, 200, links[0], defect, project=PROJECT,
                              action="ANNOTATION_UPDATED")  # fmt: skip
    assert client.post("/webhook", json=update).status_code == 200
    wait_for(lambda: (m := pipeline.memories.get("widget")) is not None and "700" not in m.sources,
             60, "the image that gained a region leaving the memory")  # fmt: skip

    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": PROJECT},
               "annotations": [{"id": 700 + i} for i in range(len(links))]}  # fmt: skip
    assert client.post("/webhook", json=deleted).status_code == 200
    wait_for(lambda: predict() == before, 60, "the prediction of before the annotations")
