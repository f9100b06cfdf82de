"""The whole loop against a real Label Studio: project, tasks, predictions, annotation events.

Run: ``bash scripts/install_labelstudio.sh`` once, then
``.venv/bin/python -m pytest tests/e2e -m labelstudio -q -x``. Tests run in file order and share
one project.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image

from tests.e2e.conftest import retrieve_predictions
from tests.helpers import wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.conftest import BackendServer, ImageServer, LabelStudioServer

pytestmark = pytest.mark.labelstudio

# Control and data names differ from the usual "tag"/"image"/"$image" on purpose.
LABEL_CONFIG = """
<View>
  <Image name="photo" value="$img"/>
  <BrushLabels name="defects" toName="photo">
    <Label value="Defect" background="red"/>
    <Label value="Other" background="blue"/>
  </BrushLabels>
  <Choices name="verdict" toName="photo">
    <Choice value="Good"/>
    <Choice value="Defective"/>
  </Choices>
</View>
"""
SERVED_SIZE = (96, 128)  # (height, width) of the images behind http:// URLs
UPLOAD_SIZE = (80, 112)  # the uploaded image has its own size
PREDICTION_TIMEOUT = 90.0
EVENT_TIMEOUT = 20.0


def synthetic_png(seed: int, size: tuple[int, int] = (96, 128)) -> tuple[bytes, np.ndarray]:
    """A synthetic 'widget' image with one scratch as PNG bytes, and its defect mask."""
    from clipsam.data import render_synthetic_image

    image, mask = render_synthetic_image(
        "widget", np.random.default_rng(seed), size=size, defect_types=("scratch",)
    )
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue(), mask


@dataclass
class Loop:
    project_id: int
    #: task id -> (width, height) of its image
    sizes: dict[int, tuple[int, int]]
    #: task id -> the image's defect mask (H×W bool)
    masks: dict[int, np.ndarray]
    served_paths: list[str]
    upload_task: int


@pytest.fixture(scope="module")
def loop(
    label_studio: LabelStudioServer, image_server: ImageServer, backend: BackendServer
) -> Loop:
    """A project with three URL tasks and one uploaded image, with the backend connected."""
    ls = label_studio.client
    project = ls.projects.create(title="ClipSAM e2e", label_config=LABEL_CONFIG)
    assert project.id is not None
    pid = project.id

    sizes: dict[int, tuple[int, int]] = {}
    masks: dict[int, np.ndarray] = {}
    served = [synthetic_png(seed, SERVED_SIZE) for seed in (1, 2, 3)]
    urls = [image_server.add(f"widget_{i}.png", png) for i, (png, _) in enumerate(served)]
    imported = ls.projects.import_tasks(
        id=pid, request=[{"img": url} for url in urls], return_task_ids=True
    )
    assert imported.task_ids is not None and len(imported.task_ids) == 3, imported
    for task_id, (_, mask) in zip(imported.task_ids, served, strict=True):
        sizes[task_id] = (SERVED_SIZE[1], SERVED_SIZE[0])
        masks[task_id] = mask

    # File upload: the SDK has no call for it; Label Studio stores it under /data/upload/<pid>/.
    png, mask = synthetic_png(4, UPLOAD_SIZE)
    response = httpx.post(
        f"{label_studio.url}/api/projects/{pid}/import",
        headers=label_studio.headers,
        params={"return_task_ids": "true"},
        files={"file": ("uploaded widget.png", png, "image/png")},
        timeout=30.0,
    )
    assert response.status_code == 201, response.text
    (upload_task,) = response.json()["task_ids"]
    sizes[upload_task] = (UPLOAD_SIZE[1], UPLOAD_SIZE[0])
    masks[upload_task] = mask
    task = ls.tasks.get(id=upload_task)
    assert str(task.data["img"]).startswith(f"/data/upload/{pid}/"), task.data

    ml = ls.ml.create(project=pid, url=backend.url, title="ClipSAM", is_interactive=False)
    assert ml.state == "CO", f"backend not connected: {ml}\n{backend.log_tail()}"
    paths = [url.removeprefix(image_server.url) for url in urls]
    return Loop(pid, sizes, masks, paths, upload_task)


def _check_brush(item: dict[str, Any], width: int, height: int) -> None:
    assert item["from_name"] == "defects" and item["to_name"] == "photo", item
    assert (item["original_width"], item["original_height"]) == (width, height), item
    value = item["value"]
    assert value["format"] == "rle" and value["brushlabels"] == ["Defect"], value
    pixels = np.asarray(decode_rle(value["rle"]), dtype=np.uint8)
    assert pixels.size == width * height * 4, (pixels.size, width, height)
    assert pixels.reshape(height, width, 4)[:, :, 3].any(), "empty brush region"


def test_predictions_for_all_tasks(
    label_studio: LabelStudioServer, image_server: ImageServer, backend: BackendServer, loop: Loop
) -> None:
    """'Retrieve predictions' stores one valid prediction per task, URL and upload alike."""
    ls = label_studio.client
    predictions = retrieve_predictions(ls, backend, loop.project_id, list(loop.sizes),
                                       PREDICTION_TIMEOUT)  # fmt: skip

    version = backend.health()["model_version"]
    with_brush = 0
    for task_id, stored in predictions.items():
        assert len(stored) == 1, stored
        prediction = stored[0]
        assert prediction.model_version == version
        assert isinstance(prediction.score, float) and 0.0 <= prediction.score <= 1.0
        width, height = loop.sizes[task_id]
        brushes = [r for r in prediction.result if r["type"] == "brushlabels"]
        choices = [r for r in prediction.result if r["type"] == "choices"]
        assert len(brushes) + len(choices) == len(prediction.result), prediction.result
        for item in brushes:
            _check_brush(item, width, height)
        assert len(choices) == 1, prediction.result
        assert choices[0]["from_name"] == "verdict" and choices[0]["to_name"] == "photo"
        assert choices[0]["value"]["choices"] == ["Defective"]
        with_brush += bool(brushes)
    assert with_brush >= 1, "no task got a brush region"
    # The backend fetched the URL images itself (the upload came from Label Studio).
    for path in loop.served_paths:
        assert path in image_server.requests, (path, image_server.requests)


def _wait_for_events(
    backend: BackendServer, wanted: set[str], annotation_id: int | None = None
) -> list[dict[str, Any]]:
    """The stored events (about ``annotation_id`` only, when given: other tests of the session
    annotate too) once every ``wanted`` action is among them, or at the timeout."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        events = [e for e in backend.events() if annotation_id is None
                  or annotation_id in _annotation_ids(e["payload"])]  # fmt: skip
        if wanted <= {e["action"] for e in events} or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def _annotation_ids(payload: dict[str, Any]) -> set[Any]:
    one = payload.get("annotation")
    many = payload.get("annotations")
    ids = {one.get("id")} if isinstance(one, dict) else set()
    return (
        ids | {a.get("id") for a in many if isinstance(a, dict)} if isinstance(many, list) else ids
    )


def test_annotation_events_reach_backend(
    label_studio: LabelStudioServer, backend: BackendServer, loop: Loop
) -> None:
    """Creating, updating and deleting an annotation each reach the backend's webhook."""
    ls = label_studio.client
    hooks = [h for h in ls.webhooks.list(project=loop.project_id) if h.url.startswith(backend.url)]
    assert [h.url for h in hooks] == [f"{backend.url}/webhook"], "Label Studio made no webhook"
    assert hooks[0].send_payload and hooks[0].send_for_all_actions, hooks[0]

    task_id = loop.upload_task
    brush, verdict = _brush_result(loop.masks[task_id])
    annotation = ls.annotations.create(id=task_id, result=[brush])
    assert annotation.id is not None
    ls.annotations.update(id=annotation.id, result=[brush, verdict])
    ls.annotations.delete(id=annotation.id)

    wanted = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
    events = _wait_for_events(backend, wanted, annotation.id)
    actions = [e["action"] for e in events]
    assert wanted <= set(actions), f"events stored: {actions}\n{backend.log_tail()}"

    def first(action: str) -> dict[str, Any]:
        return next(e["payload"] for e in events if e["action"] == action)

    created, updated = first("ANNOTATION_CREATED"), first("ANNOTATION_UPDATED")
    deleted = first("ANNOTATIONS_DELETED")
    assert created["annotation"]["id"] == annotation.id and created["task"]["id"] == task_id
    assert updated["annotation"]["id"] == annotation.id
    assert len(updated["annotation"]["result"]) == 2
    assert {"id": annotation.id} in [{"id": a["id"]} for a in deleted["annotations"]]
    assert actions.index("ANNOTATION_CREATED") < actions.index("ANNOTATIONS_DELETED")


def _brush_result(mask: np.ndarray) -> list[dict[str, Any]]:
    height, width = mask.shape
    brush = {
        "from_name": "defects",
        "to_name": "photo",
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255),
                  "brushlabels": ["Defect"]},
    }  # fmt: skip
    verdict = {"from_name": "verdict", "to_name": "photo", "type": "choices",
               "value": {"choices": ["Defective"]}}  # fmt: skip
    return [brush, verdict]


def test_corrections_retrain_and_predictions_from_the_new_head(
    label_studio: LabelStudioServer, image_server: ImageServer, backend: BackendServer, loop: Loop
) -> None:
    """Annotate → Start training → a promoted head → new model_version in Label Studio → new
    predictions that differ from the first ones."""
    ls = label_studio.client
    first_version = backend.health()["model_version"]
    first = {t: ls.predictions.list(task=t) for t in loop.sizes}
    assert all(len(p) == 1 and p[0].model_version == first_version for p in first.values())

    corrected = [synthetic_png(seed, SERVED_SIZE) for seed in range(10, 30)]
    urls = [image_server.add(f"corrected_{i}.png", png) for i, (png, _) in enumerate(corrected)]
    imported = ls.projects.import_tasks(
        id=loop.project_id, request=[{"img": url} for url in urls], return_task_ids=True
    )
    assert imported.task_ids is not None and len(imported.task_ids) == len(corrected)
    for task_id, (_, mask) in zip(imported.task_ids, corrected, strict=True):
        ls.annotations.create(id=task_id, result=_brush_result(mask))

    (ml,) = ls.ml.list(project=loop.project_id)
    ls.ml.train(id=ml.id)
    new_version = wait_for(
        lambda: (v := backend.health()["model_version"]) != first_version and v,
        240, "a promoted head", interval=1.0, context=backend.log_tail,
    )  # fmt: skip
    assert new_version.startswith("clipsam-tiny-umci-"), new_version
    wait_for(
        lambda: ls.ml.get(id=ml.id).model_version == new_version,
        30, "Label Studio to see the new model_version", interval=1.0, context=backend.log_tail,
    )  # fmt: skip

    ls.actions.create(
        id="retrieve_tasks_predictions",
        project=loop.project_id,
        selected_items={"all": False, "included": list(loop.sizes)},
    )

    def renewed() -> dict[int, Any]:
        latest = {t: [p for p in ls.predictions.list(task=t) if p.model_version == new_version]
                  for t in loop.sizes}  # fmt: skip
        return {t: p[0] for t, p in latest.items() if p} if all(latest.values()) else {}

    second = wait_for(renewed, PREDICTION_TIMEOUT, "predictions of the new head",
                      interval=1.0, context=backend.log_tail)  # fmt: skip
    changed = [
        t for t in loop.sizes
        if second[t].score != first[t][0].score or second[t].result != first[t][0].result
    ]  # fmt: skip
    assert len(changed) == len(loop.sizes), (changed, second)


def test_prelabel_output_imports_into_label_studio(
    label_studio: LabelStudioServer,
    image_server: ImageServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``python -m backend.prelabel`` on a folder writes a file Label Studio imports with its
    predictions; on a project (``--push``) it stores the same predictions in the tasks."""
    import json

    from backend.prelabel import main as prelabel

    folder = tmp_path / "images"
    folder.mkdir()
    for index, seed in enumerate((41, 42)):
        png, _ = synthetic_png(seed, SERVED_SIZE)
        (folder / f"prelabel_{index}.png").write_bytes(png)
        image_server.add(f"prelabel_{index}.png", png)
    config = tmp_path / "config.xml"
    config.write_text(LABEL_CONFIG)
    model = ["--preset", "tiny", "--config", '{"use_sam": false, "weights": "random"}', "--label-config", str(config),
             "--model-dir", str(tmp_path / "model_dir"), "--quiet"]  # fmt: skip
    out = tmp_path / "tasks.json"
    code = prelabel([*model, "--folder", str(folder), "--category", "widget",
                     "--url-prefix", f"{image_server.url}/", "--out", str(out)])  # fmt: skip
    assert code == 0
    tasks = json.loads(out.read_text())
    by_image = {task["data"]["img"]: task for task in tasks}
    assert sorted(by_image) == [f"{image_server.url}/prelabel_{i}.png" for i in (0, 1)]

    ls = label_studio.client
    imported_project = ls.projects.create(title="ClipSAM prelabel", label_config=LABEL_CONFIG)
    assert imported_project.id is not None
    imported = ls.projects.import_tasks(id=imported_project.id, request=tasks,
                                        return_task_ids=True)  # fmt: skip
    assert imported.task_ids is not None and len(imported.task_ids) == 2, imported
    first: dict[str, Any] = {}
    for task_id in imported.task_ids:
        data = ls.tasks.get(id=task_id).data
        written = by_image[data["img"]]["predictions"][0]
        (stored,) = ls.predictions.list(task=task_id)
        assert stored.model_version == written["model_version"] == "clipsam-tiny-zero-shot"
        assert stored.score == pytest.approx(written["score"])
        brushes = [r for r in stored.result if r["type"] == "brushlabels"]
        assert brushes, stored.result
        for item in brushes:
            _check_brush(item, SERVED_SIZE[1], SERVED_SIZE[0])
        first[data["img"]] = stored

    # The project source: same images, fetched from their URLs, predictions pushed.
    monkeypatch.setenv("CLIPSAM_ALLOWED_HOSTS", "127.0.0.1")
    pushed_project = ls.projects.create(title="ClipSAM prelabel push", label_config=LABEL_CONFIG)
    assert pushed_project.id is not None
    plain = ls.projects.import_tasks(id=pushed_project.id, return_task_ids=True,
                                     request=[{"data": task["data"]} for task in tasks])  # fmt: skip
    assert plain.task_ids is not None and len(plain.task_ids) == 2
    code = prelabel([*model, "--project", str(pushed_project.id), "--push",
                     "--label-studio-url", label_studio.url, "--api-key", label_studio.token])  # fmt: skip
    assert code == 0
    for task_id in plain.task_ids:
        (stored,) = ls.predictions.list(task=task_id)
        twin = first[ls.tasks.get(id=task_id).data["img"]]
        assert stored.model_version == twin.model_version
        assert (stored.score, stored.result) == (twin.score, twin.result)


def test_backend_log_is_clean(backend: BackendServer) -> None:
    """Nothing Label Studio sent made the backend raise."""
    assert backend.process.poll() is None, backend.log_tail()
    text = backend.log_path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text, backend.log_tail()
