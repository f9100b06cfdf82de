"""Smart tools over real HTTP: a click or a box in /predict's context → one SAM mask.

The pipeline is the tiny preset with micro-SAM; each answer must be exactly the mask
``Pipeline.segment`` gives for the same prompts in pixels, so a wrong frame, a dropped sign or a
lost box shows up as a different mask.
"""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

import clipsam
from clipsam.data import render_synthetic_image
from tests.helpers import BlobHead

WIDTH, HEIGHT = 128, 96

CONFIG = """
<View>
  <Image name="photo" value="$img"/>
  <KeyPointLabels name="click" toName="photo" smart="true">
    <Label value="Scratch"/><Label value="Crack"/>
  </KeyPointLabels>
  <RectangleLabels name="drag" toName="photo" smart="true">
    <Label value="Scratch"/><Label value="Crack"/>
  </RectangleLabels>
  <BrushLabels name="mask" toName="photo"><Label value="Scratch"/><Label value="Crack"/></BrushLabels>
</View>"""


@pytest.fixture(scope="module")
def sam_pipeline():
    """micro-CLIP and micro-SAM (shipped weights), with a head that always finds two blobs so
    that pre-annotation runs SAM (and caches the embedding)."""
    pipeline = clipsam.load_pipeline("tiny", weights="pretrained")
    pipeline.set_head(BlobHead(pipeline.clip.backbone_id, pipeline.clip.grid, [(3, 3), (10, 9)]))
    return pipeline


@pytest.fixture
def served(backend, image_server, sam_pipeline):
    """(client, add image) with the backend serving ``sam_pipeline``."""
    url, folder = image_server
    client = backend(loader=lambda: sam_pipeline)

    def add(seed: int) -> tuple[dict, np.ndarray]:
        image, _ = render_synthetic_image(
            "widget", np.random.default_rng(seed), size=(HEIGHT, WIDTH), defect_types=("scratch",)
        )
        Image.fromarray(image).save(folder / f"w{seed}.png")
        return {"id": seed, "data": {"img": f"{url}/w{seed}.png"}}, image

    return client, add


def keypoint(x, y, positive=True, label="Crack"):
    return {"from_name": "click", "to_name": "photo", "type": "keypointlabels",
            "original_width": WIDTH, "original_height": HEIGHT, "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]}}  # fmt: skip


def rectangle(x, y, w, h, label="Crack"):
    return {"from_name": "drag", "to_name": "photo", "type": "rectanglelabels",
            "original_width": WIDTH, "original_height": HEIGHT,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}  # fmt: skip


def click(client, task, *items, config=CONFIG, top_level=False):
    context = {"result": list(items)}
    body = {"tasks": [task], "label_config": config, "project": "7.1"}
    body.update({"context": context} if top_level else {"params": {"context": context}})
    return client.post("/predict", json=body)


def brush_mask(response) -> tuple[np.ndarray, dict]:
    assert response.status_code == 200, response.text
    [prediction] = response.json()["results"]
    [item] = prediction["result"]
    assert item["type"] == "brushlabels" and item["from_name"] == "mask"
    assert (item["original_width"], item["original_height"]) == (WIDTH, HEIGHT)
    rle = decode_rle(item["value"]["rle"])
    return np.reshape(rle, (HEIGHT, WIDTH, 4))[:, :, 3] > 0, prediction


def px(x, y):
    return [x * WIDTH / 100, y * HEIGHT / 100]


def test_a_click_gives_the_mask_sam_decodes_for_that_pixel(served, sam_pipeline):
    client, add = served
    task, image = add(1)
    mask, prediction = brush_mask(click(client, task, keypoint(40.0, 55.0)))
    expected = sam_pipeline.segment(image, np.array([px(40.0, 55.0)]), np.array([1]))
    assert mask.any()
    np.testing.assert_array_equal(mask, expected.mask)
    assert prediction["score"] == pytest.approx(expected.iou, abs=1e-4)
    assert prediction["result"][0]["value"]["brushlabels"] == ["Crack"]  # the annotator's label
    assert prediction["model_version"] == "clipsam-tiny-blob"


def test_a_negative_click_keeps_its_sign(served, sam_pipeline):
    client, add = served
    task, image = add(2)
    points = np.array([px(40, 55), px(70, 30)])
    mask, _ = brush_mask(click(client, task, keypoint(40, 55), keypoint(70, 30, positive=False)))
    expected = sam_pipeline.segment(image, points, np.array([1, 0]))
    both_positive = sam_pipeline.segment(image, points, np.array([1, 1]))
    assert not np.array_equal(expected.mask, both_positive.mask)  # the sign matters here
    np.testing.assert_array_equal(mask, expected.mask)


def test_a_box_gives_the_mask_sam_decodes_for_that_box(served, sam_pipeline):
    client, add = served
    task, image = add(3)
    mask, prediction = brush_mask(click(client, task, rectangle(20, 30, 40, 50, label="Other")))
    expected = sam_pipeline.segment(image, box=np.array([0.2 * WIDTH, 0.3 * HEIGHT,
                                                         0.6 * WIDTH, 0.8 * HEIGHT]))  # fmt: skip
    np.testing.assert_array_equal(mask, expected.mask)
    assert prediction["result"][0]["value"]["brushlabels"] == ["Scratch"]  # not a brush label


def test_points_and_a_box_together_and_a_top_level_context(served, sam_pipeline):
    client, add = served
    task, image = add(4)
    items = (rectangle(10, 10, 60, 70), keypoint(30, 40), keypoint(50, 60, positive=False))
    mask, _ = brush_mask(click(client, task, *items, top_level=True))
    expected = sam_pipeline.segment(
        image, np.array([px(30, 40), px(50, 60)]), np.array([1, 0]),
        np.array([0.1 * WIDTH, 0.1 * HEIGHT, 0.7 * WIDTH, 0.8 * HEIGHT]),
    )  # fmt: skip
    np.testing.assert_array_equal(mask, expected.mask)


def test_polygon_output_when_the_config_has_no_brush(served, sam_pipeline):
    client, add = served
    task, _ = add(5)
    config = CONFIG.replace("BrushLabels", "PolygonLabels")
    response = click(client, task, keypoint(40, 55), config=config)
    assert response.status_code == 200, response.text
    items = response.json()["results"][0]["result"]
    assert items and all(i["type"] == "polygonlabels" for i in items)
    assert all(i["value"]["polygonlabels"] == ["Crack"] for i in items)
    assert len({i["id"] for i in items}) == len(items)


def test_an_unseen_image_is_embedded_once_and_a_preannotated_one_not_again(served, sam_pipeline):
    client, add = served
    task, _ = add(6)
    forwards = sam_pipeline.stats.sam_forwards
    brush_mask(click(client, task, keypoint(40, 55)))
    assert sam_pipeline.stats.sam_forwards == forwards + 1  # the first click embeds it
    brush_mask(click(client, task, keypoint(60, 45)))
    brush_mask(click(client, task, rectangle(10, 10, 50, 50)))
    assert sam_pipeline.stats.sam_forwards == forwards + 1  # and later clicks reuse it

    task, _ = add(7)
    response = client.post("/predict", json={"tasks": [task], "label_config": CONFIG})
    assert response.status_code == 200, response.text
    after_preannotation = sam_pipeline.stats.sam_forwards
    assert after_preannotation == forwards + 2  # the blobs went through SAM
    brush_mask(click(client, task, keypoint(40, 55)))
    assert sam_pipeline.stats.sam_forwards == after_preannotation


@pytest.mark.parametrize(
    ("items", "config", "message"),
    [
        ([{"type": "keypointlabels", "from_name": "click", "value": {"x": "a", "y": 1}}], CONFIG,
         "value.x must be a number"),
        ([keypoint(40, 55, positive=False)], CONFIG, "only negative points"),
        ([keypoint(40, 55)], CONFIG.replace(' smart="true"', ""), "no smart tool"),
        ([keypoint(40, 55)], CONFIG.replace("BrushLabels", "Choices"), "no BrushLabels"),
    ],
)  # fmt: skip
def test_unreadable_contexts_and_configs_are_422(served, items, config, message):
    client, add = served
    task, _ = add(8)
    response = click(client, task, *items, config=config)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_without_sam_the_answer_says_interactive_needs_it(backend, image_server, blob_pipeline):
    url, folder = image_server
    Image.new("RGB", (WIDTH, HEIGHT)).save(folder / "plain.png")
    client = backend()  # blob_pipeline: use_sam off
    task = {"id": 1, "data": {"img": f"{url}/plain.png"}}
    response = click(client, task, keypoint(40, 55))
    assert response.status_code == 503 and "need SAM" in response.json()["detail"]


def test_clicks_pass_the_same_auth_and_rate_limit_as_predict(backend, image_server, sam_pipeline):
    url, folder = image_server
    Image.new("RGB", (WIDTH, HEIGHT)).save(folder / "plain.png")
    client = backend(loader=lambda: sam_pipeline, basic_auth_user="u", basic_auth_pass="p",
                     predict_rate=1.0, predict_burst=1)  # fmt: skip
    task = {"id": 1, "data": {"img": f"{url}/plain.png"}}
    assert click(client, task, keypoint(40, 55)).status_code == 401
    client.auth = ("u", "p")
    assert click(client, task, keypoint(40, 55)).status_code == 200
    assert click(client, task, keypoint(40, 55)).status_code == 429


def test_a_click_on_a_cached_image_does_not_wait_behind_a_batch(sam_pipeline, tmp_path):
    """The pipeline lock held (a pre-annotation batch running): a click on a cached image still
    answers; the first click on another image waits for its turn, then answers."""
    import threading

    from backend.interactive import InteractivePredictor
    from backend.model import ModelService
    from backend.settings import Settings

    images = {}
    for seed in (41, 42):
        images[f"http://h/{seed}.png"], _ = render_synthetic_image(
            "widget", np.random.default_rng(seed), size=(HEIGHT, WIDTH), defect_types=("spot",)
        )

    class Fetcher:
        def fetch(self, reference, task_id=None):
            return images[reference]

    settings = Settings(model_dir=tmp_path, preset="tiny")
    model = ModelService(settings, loader=lambda: sam_pipeline)
    lock = threading.Lock()
    predictor = InteractivePredictor(settings, model, Fetcher(), lock)  # type: ignore[arg-type]
    context = {"result": [keypoint(40, 50)]}
    sam_pipeline.segment(images["http://h/41.png"], np.array([px(40, 50)]), np.array([1]))

    def ask(seed: int, out: list) -> None:
        task = {"id": seed, "data": {"img": f"http://h/{seed}.png"}}
        out.append(predictor.predict([task], context, CONFIG))

    with lock:  # a batch holds the pipeline
        cached, fresh = [], []
        first = threading.Thread(target=ask, args=(41, cached))
        second = threading.Thread(target=ask, args=(42, fresh))
        first.start()
        second.start()
        first.join(timeout=30)
        assert cached and not first.is_alive()  # answered while the lock was held
        second.join(timeout=1.0)
        assert second.is_alive() and not fresh  # the encoder waits for its turn
    second.join(timeout=60)
    assert fresh and fresh[0]["results"][0]["result"][0]["type"] == "brushlabels"
