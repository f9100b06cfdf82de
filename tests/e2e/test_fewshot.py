"""Few-shot normal memory against a real Label Studio 1.23: images annotated as good (no region)
change the next prediction of their category without a retrain; deleting the annotations
restores it. Its own category ("gizmo"), so the other end-to-end tests never see the memory.

Label Studio predicts a task once per ``model_version``, and the memory does not change the
version, so "the next prediction" is that of a task not predicted before: each look at the
memory imports the same query image as a new task.

Run: ``.venv/bin/python -m pytest tests/e2e/test_fewshot.py -m labelstudio -q -x``.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import connected_project
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
    references = [image_server.add(f"gizmo_{i}.png", _png(i)) for i in range(1, 4)]
    query_url = image_server.add("gizmo_0.png", _png(0))
    project_id, reference_tasks, _ = connected_project(
        ls, backend, "ClipSAM few-shot", LABEL_CONFIG,
        [{"image": url, "category": CATEGORY} for url in references],
    )  # fmt: skip
    version = backend.health()["model_version"]

    def predict_query() -> Any:
        """A new task showing the query image, predicted now. Label Studio never predicts a
        task again for the same model_version, so each look at the memory is a new task."""
        [task] = ls.projects.import_tasks(
            id=project_id, request=[{"image": query_url, "category": CATEGORY}],
            return_task_ids=True,
        ).task_ids or []  # fmt: skip
        ls.actions.create(id="retrieve_tasks_predictions", project=project_id,
                          selected_items={"all": False, "included": [task]})  # fmt: skip
        return wait_for(lambda: ls.predictions.list(task=task), TIMEOUT, "a prediction",
                        interval=1.0, context=backend.log_tail)[0]  # fmt: skip

    first = predict_query()
    good = [{"id": "v", "type": "choices", "from_name": "verdict", "to_name": "image",
             "original_width": 96, "original_height": 96, "value": {"choices": ["Good"]}}]  # fmt: skip
    annotations = [ls.annotations.create(id=task, result=good) for task in reference_tasks]

    def changed() -> Any:
        latest = predict_query()
        return latest if latest.result != first.result else None

    second = wait_for(changed, TIMEOUT, "a prediction with the normal memory", interval=2.0,
                      context=backend.log_tail)  # fmt: skip
    assert _anomaly_score(second) < _anomaly_score(first)
    assert second.model_version == first.model_version == version  # no retrain, no new head
    assert backend.health()["model_version"] == version

    for annotation in annotations:
        assert annotation.id is not None
        ls.annotations.delete(id=annotation.id)

    def restored() -> Any:
        latest = predict_query()
        return latest if latest.result == first.result else None

    wait_for(restored, TIMEOUT, "the prediction of before the annotations", interval=2.0,
             context=backend.log_tail)  # fmt: skip
