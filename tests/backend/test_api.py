"""The backend over real HTTP: every control type, odd data keys, ordering, bad input, auth."""

from __future__ import annotations

import json
import threading
import zlib

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image, ImageDraw

from labelstudio.predictions import verdict_confidence

CONFIG_ALL = """
<View>
  <Image name="photo" value="$photo"/>
  <BrushLabels name="brush" toName="photo"><Label value="Dent"/><Label value="Defect"/></BrushLabels>
  <PolygonLabels name="poly" toName="photo"><Label value="Defect"/></PolygonLabels>
  <RectangleLabels name="rect" toName="photo"><Label value="Defect"/></RectangleLabels>
  <Choices name="verdict" toName="photo"><Choice value="Good"/><Choice value="Defective"/></Choices>
</View>"""

CONFIG_BRUSH = """
<View>
  <Image name="image" value="$img"/>
  <BrushLabels name="tag" toName="image"><Label value="Defect"/></BrushLabels>
</View>"""


def _png(folder, name, size=(96, 64), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return name


def _predict(client, tasks, config=CONFIG_ALL, **extra):
    return client.post("/predict", json={"tasks": tasks, "label_config": config, **extra})


def test_every_control_type_from_the_config(backend, image_server, blob_pipeline):
    url, folder = image_server
    client = backend(defect_label="Defect")
    task = {"id": 1, "data": {"photo": f"{url}/{_png(folder, 'a.png')}", "category": "bottle"}}
    response = _predict(client, [task])
    assert response.status_code == 200, response.text
    [prediction] = response.json()["results"]
    expected = blob_pipeline.predict([np.asarray(Image.open(folder / "a.png"))], "bottle")[0]
    # The prediction's score is how sure the verdict is; the anomaly score is on the verdict.
    assert prediction["score"] == pytest.approx(verdict_confidence(expected.score, 0.5), abs=1e-4)
    [verdict] = [item for item in prediction["result"] if item["type"] == "choices"]
    assert verdict["score"] == pytest.approx(expected.score, abs=1e-4)
    assert prediction["model_version"] == "clipsam-tiny-blob"
    by_type: dict[str, list] = {}
    for item in prediction["result"]:
        assert item["to_name"] == "photo"
        by_type.setdefault(item["type"], []).append(item)
    regions = expected.regions
    assert len(regions) == 2
    assert len(by_type["brushlabels"]) == len(by_type["rectanglelabels"]) == len(regions)
    for item, region in zip(by_type["brushlabels"], regions, strict=True):
        assert item["from_name"] == "brush" and item["value"]["brushlabels"] == ["Defect"]
        assert (item["original_width"], item["original_height"]) == (96, 64)
        decoded = np.reshape(decode_rle(item["value"]["rle"]), (64, 96, 4))[:, :, 3] > 0
        np.testing.assert_array_equal(decoded, region.mask)
    for item, region in zip(by_type["rectanglelabels"], regions, strict=True):
        x0, y0, x1, y1 = region.bbox
        value = item["value"]
        assert value["x"] == pytest.approx(100 * x0 / 96)
        assert value["y"] == pytest.approx(100 * y0 / 64)
        assert value["width"] == pytest.approx(100 * (x1 - x0) / 96)
        assert value["height"] == pytest.approx(100 * (y1 - y0) / 64)
    for item in by_type["polygonlabels"]:
        points = np.asarray(item["value"]["points"])
        assert (
            points.shape[1] == 2
            and len(points) >= 3
            and (points >= 0).all()
            and (points <= 100).all()
        )
        assert item["value"]["polygonlabels"] == ["Defect"]
    assert len(by_type["polygonlabels"]) >= len(regions)
    [verdict] = by_type["choices"]
    assert verdict["value"]["choices"] == ["Defective" if expected.score >= 0.5 else "Good"]


def test_polygons_trace_the_region_outline(backend, image_server):
    """Rasterising the returned polygon gives back (nearly) the region's pixels."""
    url, folder = image_server
    client = backend()
    task = {"id": 1, "data": {"photo": f"{url}/{_png(folder, 'p.png', size=(128, 128))}"}}
    result = _predict(client, [task]).json()["results"][0]["result"]
    brush = next(i for i in result if i["type"] == "brushlabels")
    mask = np.reshape(decode_rle(brush["value"]["rle"]), (128, 128, 4))[:, :, 3] > 0
    polygon = next(i for i in result if i["type"] == "polygonlabels")
    canvas = Image.new("L", (128, 128))
    points = [(x * 128 / 100, y * 128 / 100) for x, y in polygon["value"]["points"]]
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    drawn = np.asarray(canvas) > 0
    overlap = (drawn & mask).sum() / max(1, (drawn | mask).sum())
    assert overlap > 0.8


@pytest.mark.parametrize("key", ["img", "photo", "image_url"])
def test_odd_data_keys_come_from_the_config(backend, image_server, key):
    url, folder = image_server
    config = CONFIG_BRUSH.replace("$img", f"${key}")
    client = backend()
    task = {"id": 3, "data": {key: f"{url}/{_png(folder, 'k.png')}"}}
    [prediction] = _predict(client, [task], config=config).json()["results"]
    assert prediction["result"] and {i["from_name"] for i in prediction["result"]} == {"tag"}


def test_many_tasks_come_back_in_order(backend, image_server):
    url, folder = image_server
    client = backend()
    widths = [40 + 7 * i for i in range(12)]
    tasks = [
        {"id": i, "data": {"photo": f"{url}/{_png(folder, f't{i}.png', size=(w, 50), seed=i)}",
                           "category": ["bottle", "screw", None][i % 3]}}
        for i, w in enumerate(widths)
    ]  # fmt: skip
    results = _predict(client, tasks).json()["results"]
    assert len(results) == len(tasks)
    for width, prediction in zip(widths, results, strict=True):
        assert {i["original_width"] for i in prediction["result"] if "original_width" in i} == {
            width
        }


def _bomb_png() -> bytes:
    """A valid 1-bit PNG header claiming 30000×30000 pixels: tiny on disk."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 30000 // 8) * 100)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def test_bad_images_give_empty_results_and_the_rest_still_predict(backend, image_server, caplog):
    url, folder = image_server
    (folder / "broken.png").write_bytes(_png_bytes()[:60])
    (folder / "text.png").write_bytes(b"hello, not an image")
    (folder / "bomb.png").write_bytes(_bomb_png())
    good = _png(folder, "good.png")
    client = backend(max_image_pixels=10_000_000)
    tasks = [
        {"id": 1, "data": {"photo": f"{url}/broken.png"}},
        {"id": 2, "data": {"photo": f"{url}/text.png"}},
        {"id": 3, "data": {"photo": f"{url}/bomb.png"}},
        {"id": 4, "data": {"photo": "http://10.11.12.13/internal.png"}},
        {"id": 5, "data": {"photo": f"{url}/missing.png"}},
        {"id": 6, "data": {}},
        {"id": 7, "data": {"photo": f"{url}/{good}"}},
    ]
    results = _predict(client, tasks).json()["results"]
    assert [bool(r["result"]) for r in results] == [False] * 6 + [True]
    assert all(r["score"] == 0.0 for r in results[:6]) and results[6]["score"] > 0
    assert client.get("/health").json()["status"] == "UP"


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "json"),
        (b'{"label_config": "<View/>"}', "tasks"),
        (b'{"tasks": [], "label_config": "<View/>"}', "tasks"),
        (b'{"tasks": "abc"}', "tasks"),
    ],
)
def test_malformed_bodies_are_422(backend, body, fragment):
    client = backend()
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert fragment in response.text.lower()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
         '<Choice value="Defective"/></Choices></View>', "no <Image> tag"),
        ('<View><Image name="i" value="$img"/><TextArea name="t" toName="i"/></View>',
         "no control this backend can fill"),
        ("<View><Image name=", "not valid XML"),
    ],
)  # fmt: skip
def test_unusable_label_configs_are_explained(backend, config, message):
    client = backend()
    response = _predict(client, [{"id": 1, "data": {"img": "x"}}], config=config)
    assert response.status_code == 422 and message in response.json()["detail"]
    setup = client.post("/setup", json={"project": "1.2", "schema": config})
    assert setup.status_code == 422


def test_unknown_defect_label_is_explained(backend):
    client = backend(defect_label="Crack")
    response = _predict(client, [{"id": 1, "data": {"img": "x"}}], config=CONFIG_BRUSH)
    assert response.status_code == 422 and "CLIPSAM_DEFECT_LABEL='Crack'" in response.text


def test_setup_remembers_the_config_for_its_project(backend, image_server):
    url, folder = image_server
    client = backend()
    setup = client.post("/setup", json={"project": "7.1795423472", "schema": CONFIG_BRUSH})
    assert setup.json() == {"model_version": "clipsam-tiny-blob"}
    task = {"id": 1, "data": {"img": f"{url}/{_png(folder, 's.png')}"}}
    response = client.post("/predict", json={"tasks": [task], "project": "7.1795423472"})
    assert response.status_code == 200 and response.json()["results"][0]["result"]
    orphan = client.post("/predict", json={"tasks": [task], "project": "8.1"})
    assert orphan.status_code == 422


def test_health_and_setup_answer_while_the_model_loads(backend, blob_pipeline):
    release = threading.Event()

    def slow_loader():
        release.wait(30)
        return blob_pipeline

    client = backend(loader=slow_loader, model_wait_seconds=0.2)
    health = client.get("/health").json()
    assert health["status"] == "UP" and health["ready"] is False
    assert client.post("/setup", json={"schema": CONFIG_BRUSH}).status_code == 200
    busy = _predict(client, [{"id": 1, "data": {"img": "x"}}], config=CONFIG_BRUSH)
    assert busy.status_code == 503 and busy.headers["retry-after"]
    release.set()
    for _ in range(100):
        if client.get("/health").json()["ready"]:
            break
        threading.Event().wait(0.05)
    assert client.get("/health").json()["ready"] is True


def test_a_model_that_fails_to_load_is_reported(backend):
    def broken():
        raise FileNotFoundError("sam_vit_h_4b8939.pth is missing; set CLIPSAM_SAM_CHECKPOINT")

    client = backend(loader=broken)
    response = _predict(client, [{"id": 1, "data": {"img": "x"}}], config=CONFIG_BRUSH)
    assert response.status_code == 503 and "CLIPSAM_SAM_CHECKPOINT" in response.text
    assert "CLIPSAM_SAM_CHECKPOINT" in client.get("/health").json()["error"]


WEBHOOK_EVENTS = [
    {"action": "ANNOTATION_CREATED", "annotation": {"id": 5, "result": []}, "task": {"id": 1}},
    {"action": "ANNOTATION_UPDATED", "annotation": {"id": 5, "result": []}, "task": {"id": 1}},
    {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 5}], "project": {"id": 1}},
    {"action": "START_TRAINING", "project": {"id": 1}},
]


def test_webhook_stores_corrections_and_tolerates_unknown_actions(backend, tmp_path):
    client = backend()
    for event in WEBHOOK_EVENTS:
        assert client.post("/webhook", json=event).json() == {"status": "ok"}
    for action in ("TASKS_CREATED", "PROJECT_UPDATED", "SOMETHING_NEW"):
        assert client.post("/webhook", json={"action": action}).status_code == 200
    log = tmp_path / "model_dir" / "events" / "webhook.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["action"] for line in lines] == [e["action"] for e in WEBHOOK_EVENTS]
    assert lines[2]["payload"]["annotations"] == [{"id": 5}]
    assert client.post("/webhook", content=b"[1, 2]").status_code == 422
    assert client.post("/webhook", json={"no": "action"}).status_code == 422


def test_basic_auth_everywhere_but_health_and_the_webhook_secret(backend):
    client = backend(basic_auth_user="ls", basic_auth_pass="s3cret", webhook_secret="hook-key")
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200
    for method, path in [("post", "/setup"), ("post", "/predict"), ("get", "/versions"),
                         ("post", "/webhook")]:  # fmt: skip
        response = client.request(method.upper(), path, json={"action": "X"})
        assert response.status_code == 401, path
    assert client.get("/versions", auth=("ls", "wrong")).status_code == 401
    assert client.get("/versions", auth=("ls", "s3cret")).json() == {
        "versions": ["clipsam-tiny-blob"]
    }
    event = WEBHOOK_EVENTS[0]
    assert (
        client.post("/webhook", json=event, headers={"X-Webhook-Secret": "hook-key"}).status_code
        == 200
    )
    assert client.post("/webhook?secret=hook-key", json=event).status_code == 200
    assert (
        client.post(
            "/webhook", json=event, headers={"Authorization": "Bearer hook-key"}
        ).status_code
        == 200
    )
    assert (
        client.post("/webhook", json=event, headers={"X-Webhook-Secret": "nope"}).status_code == 401
    )
    assert client.post("/webhook", json=event, auth=("ls", "s3cret")).status_code == 200


def test_oversized_bodies_are_refused(backend):
    client = backend(max_request_bytes=1000)
    response = client.post(
        "/predict", content=b"x" * 5000, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_openapi_schema_documents_the_protocol(backend):
    paths = backend().get("/openapi.json").json()["paths"]
    assert {"/health", "/setup", "/predict", "/webhook", "/versions"} <= set(paths)


CONFIG_TYPES = """
<View>
  <Image name="photo" value="$photo"/>
  <BrushLabels name="brush" toName="photo">
    <Label value="Scratch"/><Label value="Crack"/><Label value="Stain"/>
  </BrushLabels>
  <RectangleLabels name="box" toName="photo"><Label value="Crack"/><Label value="Stain"/></RectangleLabels>
  <Choices name="kind" toName="photo"><Choice value="Scratch"/><Choice value="Crack"/><Choice value="Stain"/></Choices>
</View>"""


def _always(label: str, labels: tuple[str, ...]):
    """A type classifier whose only opinion is ``label`` (a huge intercept on it)."""
    from clipsam.defect_types import TypeClassifier, _Expert

    def expert(dim: int) -> _Expert:
        intercept = np.array([50.0 if name == label else 0.0 for name in labels])
        return _Expert(np.zeros(dim), np.ones(dim), np.zeros((len(labels), dim)), intercept)

    return TypeClassifier(labels, expert(64), expert(5), (1,) * len(labels))


def test_several_defect_labels_type_each_region(backend, image_server, blob_pipeline):
    url, folder = image_server
    client = backend()
    task = {"id": 1, "data": {"photo": f"{url}/{_png(folder, 't.png')}"}}
    [prediction] = _predict(client, [task], CONFIG_TYPES).json()["results"]
    image = np.asarray(Image.open(folder / "t.png"))
    [expected] = blob_pipeline.predict([image], "widget")
    blob_pipeline.type_regions([image], [expected], ["Scratch", "Crack", "Stain"], "widget")
    brushes = [i for i in prediction["result"] if i["type"] == "brushlabels"]
    assert len(brushes) == len(expected.regions) == 2
    for item, region in zip(brushes, expected.regions, strict=True):  # zero-shot, as served
        assert item["value"]["brushlabels"] == [region.label]
        assert item["score"] == pytest.approx(region.label_probs[region.label], abs=1e-4)
    for item in prediction["result"]:
        if item["type"] == "rectanglelabels":
            assert item["value"]["rectanglelabels"][0] in ("Crack", "Stain")

    # A head that learnt types decides instead of zero-shot, for every control and the choice.
    head = blob_pipeline.head
    head.type_classifier = _always("Stain", ("Crack", "Scratch", "Stain"))
    try:
        [prediction] = _predict(client, [task], CONFIG_TYPES).json()["results"]
    finally:
        head.type_classifier = None
    labels = {item["type"]: item["value"][item["type"]] for item in prediction["result"]}
    assert labels == {"brushlabels": ["Stain"], "rectanglelabels": ["Stain"], "choices": ["Stain"]}
    assert all(item["score"] == pytest.approx(1.0) for item in prediction["result"])
