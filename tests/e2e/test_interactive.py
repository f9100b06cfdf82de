"""Smart tools against a real Label Studio 1.23.2: a keypoint → Label Studio's own
interactive-annotating API → this backend → a brush mask back through Label Studio.

Run: ``.venv/bin/python -m pytest tests/e2e/test_interactive.py -m labelstudio -q -x``.
The backend is the session's ``python -m backend`` (tiny preset, random weights); the mask it
sends must be exactly what ``Pipeline.segment`` gives for the click in this process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from tests.e2e.conftest import connected_project
from tests.e2e.test_labelstudio import synthetic_png

if TYPE_CHECKING:
    from tests.e2e.conftest import BackendServer, ImageServer, LabelStudioServer

pytestmark = pytest.mark.labelstudio

SMART_CONFIG = """
<View>
  <Image name="photo" value="$img"/>
  <KeyPointLabels name="click" toName="photo" smart="true">
    <Label value="Scratch" background="red"/><Label value="Crack" background="blue"/>
  </KeyPointLabels>
  <RectangleLabels name="drag" toName="photo" smart="true">
    <Label value="Scratch" background="red"/><Label value="Crack" background="blue"/>
  </RectangleLabels>
  <BrushLabels name="defects" toName="photo">
    <Label value="Scratch" background="red"/><Label value="Crack" background="blue"/>
  </BrushLabels>
</View>
"""
HEIGHT, WIDTH = 96, 128
CLICK = (40.0, 55.0)  # percent
MARKER = "interactive context: "


@dataclass
class Smart:
    project_id: int
    ml_id: int
    task_id: int
    image: np.ndarray


@pytest.fixture(scope="module")
def smart(label_studio: LabelStudioServer, image_server: ImageServer, backend: BackendServer):
    """A smart-tool project with one task, the backend connected for interactive use."""
    png, _ = synthetic_png(11, (HEIGHT, WIDTH))
    url = image_server.add("smart_widget.png", png)
    project_id, [task_id], ml = connected_project(
        label_studio.client, backend, "ClipSAM smart tools", SMART_CONFIG, [{"img": url}],
        interactive=True,
    )  # fmt: skip
    image = np.asarray(Image.open(image_server.root / "smart_widget.png").convert("RGB"))
    return Smart(project_id, ml.id, task_id, image)


def keypoint_as_the_editor_sends_it() -> dict[str, Any]:
    """A smart keypoint as Label Studio's editor serializes it (label-studio-frontend in 1.23:
    ``createSerializedResult`` plus ``is_positive`` and ``value.labels`` on dynamic regions)."""
    return {
        "id": "kp1",
        "from_name": "click",
        "to_name": "photo",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": {
            "x": CLICK[0],
            "y": CLICK[1],
            "width": 0.6,
            "keypointlabels": ["Crack"],
            "labels": ["Crack"],
        },
        "is_positive": True,
    }


def forwarded_contexts(backend: BackendServer) -> list[dict[str, Any]]:
    """The contexts the backend received, from its DEBUG log."""
    lines = backend.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [json.loads(line.split(MARKER, 1)[1]) for line in lines if MARKER in line]


def test_a_smart_keypoint_gets_a_brush_mask_through_label_studio(
    label_studio: LabelStudioServer, backend: BackendServer, smart: Smart
) -> None:
    sent = {"result": [keypoint_as_the_editor_sends_it()]}
    response = httpx.post(
        f"{label_studio.url}/api/ml/{smart.ml_id}/interactive-annotating",
        headers=label_studio.headers,
        json={"task": smart.task_id, "context": sent},
        timeout=120.0,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, f"{body}\n{backend.log_tail()}"
    [item] = body["data"]["result"]
    assert item["type"] == "brushlabels" and item["from_name"] == "defects", item
    assert item["to_name"] == "photo" and item["value"]["brushlabels"] == ["Crack"], item
    assert (item["original_width"], item["original_height"]) == (WIDTH, HEIGHT)
    mask = np.reshape(decode_rle(item["value"]["rle"]), (HEIGHT, WIDTH, 4))[:, :, 3] > 0

    import clipsam  # the backend's pipeline, rebuilt here: same preset, same seed

    pipeline = clipsam.load_pipeline("tiny", weights="random")
    point = np.array([[CLICK[0] * WIDTH / 100, CLICK[1] * HEIGHT / 100]])
    expected = pipeline.segment(smart.image, point, np.array([1]))
    assert mask.any()
    np.testing.assert_array_equal(mask, expected.mask)
    assert body["data"]["score"] == pytest.approx(expected.iou, abs=1e-3)

    # What Label Studio forwarded as params.context: the editor's context, unchanged.
    assert forwarded_contexts(backend)[-1] == sent
