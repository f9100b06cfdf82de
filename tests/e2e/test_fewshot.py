"""Few-shot normal memory against a real Label Studio 1.23: images annotated as good (no region)
change the next prediction of their category without a retrain; deleting the annotations
restores it. Its own category ("gizmo"), so the other end-to-end tests never see the memory.

Run: ``.venv/bin/python -m pytest tests/e2e/test_fewshot.py -m labelstudio -q -x``.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import wait_for

if TYPE_CHECKING:
    from tests.e2e.conftest import BackendServer, ImageServer, LabelStudioServer

pytestmark = pytest.mark.labelstudio

LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="defect" toName="image"><Label value="Defect" background="red"/></BrushLabels>
  <Choices name="verdict" toName="image">
    <Choice value="Good"/>
    <Choice value="Defective"/>
  </Choices>
</View>
"""
CATEGORY = "gizmo"
TIMEOUT = 90.0


def _png(seed: int) -> bytes:
    from clipsam.data.world import render_sample

    sample = render_sample(CATEGORY, np.random.default_rng([11, seed]), (96, 96))
    buffer = io.BytesIO()
    Image.fromarray(sample.image).save(buffer, format="PNG")
    return buffer.getvalue()


def _anomaly_score(prediction: Any) -> float:
    """The image anomaly score, carried by the verdict item."""
    (verdict,) = [r for r in prediction.result if r["type"] == "choices"]
    return float(verdict["score"])


def test_good_annotations_change_the_next_prediction_without_a_retrain(
    label_studio: LabelStudioServer, image_server: ImageServer, backend: BackendServer
) -> None:
    ls = label_studio.client
    project = ls.projects.create(title="ClipSAM few-shot", label_config=LABEL_CONFIG)
    assert project.id is not None
    urls = [image_server.add(f"gizmo_{i}.png", _png(i)) for i in range(4)]
    imported = ls.projects.import_tasks(
        id=project.id,
        request=[{"image": url, "category": CATEGORY} for url in urls],
        return_task_ids=True,
    )
    assert imported.task_ids is not None
    tasks = list(imported.task_ids)
    query = tasks[0]
    ml = ls.ml.create(project=project.id, url=backend.url, title="ClipSAM", is_interactive=False)
    assert ml.state == "CO", f"backend not connected: {ml}\n{backend.log_tail()}"
    version = backend.health()["model_version"]
    seen: set[int] = set()

    def next_prediction() -> Any:
        """Ask Label Studio for the query task's prediction again; the newest one it stores."""
        ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": False, "included": [query]})  # fmt: skip
        fresh = [p for p in ls.predictions.list(task=query) if p.id not in seen]
        if not fresh:
            return None
        newest = max(fresh, key=lambda p: p.id)
        seen.update(p.id for p in fresh)
        return newest

    first = wait_for(next_prediction, TIMEOUT, "a first prediction", interval=1.0,
                     context=backend.log_tail)  # fmt: skip

    good = [{"id": "v", "type": "choices", "from_name": "verdict", "to_name": "image",
             "original_width": 96, "original_height": 96, "value": {"choices": ["Good"]}}]  # fmt: skip
    annotations = [ls.annotations.create(id=task, result=good) for task in tasks]

    def changed() -> Any:
        latest = next_prediction()
        return latest if latest is not None and latest.result != first.result else None

    second = wait_for(changed, TIMEOUT, "a prediction with the normal memory", interval=2.0,
                      context=backend.log_tail)  # fmt: skip
    assert _anomaly_score(second) < _anomaly_score(first)
    assert second.model_version == first.model_version == version  # no retrain, no new head
    assert backend.health()["model_version"] == version

    for annotation in annotations:
        assert annotation.id is not None
        ls.annotations.delete(id=annotation.id)

    def restored() -> Any:
        latest = next_prediction()
        return latest if latest is not None and latest.result == first.result else None

    wait_for(restored, TIMEOUT, "the prediction of before the annotations", interval=2.0,
             context=backend.log_tail)  # fmt: skip
