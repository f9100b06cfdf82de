"""Several defect labels against a real Label Studio 1.23: typed regions and a typed choice.

Run: ``.venv/bin/python -m pytest tests/e2e/test_defect_types.py -m labelstudio -q -x``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.e2e.test_labelstudio import synthetic_png

if TYPE_CHECKING:
    from tests.e2e.conftest import BackendServer, ImageServer, LabelStudioServer

pytestmark = pytest.mark.labelstudio

TYPES = ("Scratch", "Crack", "Stain")
LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="defects" toName="image">
    <Label value="Scratch"/><Label value="Crack"/><Label value="Stain"/>
  </BrushLabels>
  <Choices name="kind" toName="image">
    <Choice value="Scratch"/><Choice value="Crack"/><Choice value="Stain"/>
  </Choices>
</View>
"""
TIMEOUT = 90.0


def test_a_multi_label_config_gets_typed_regions(
    label_studio: LabelStudioServer, image_server: ImageServer, backend: BackendServer
) -> None:
    ls = label_studio.client
    project = ls.projects.create(title="ClipSAM defect types", label_config=LABEL_CONFIG)
    assert project.id is not None
    urls = [image_server.add(f"typed_{i}.png", synthetic_png(20 + i)[0]) for i in range(3)]
    imported = ls.projects.import_tasks(
        id=project.id, request=[{"image": url} for url in urls], return_task_ids=True
    )
    assert imported.task_ids is not None and len(imported.task_ids) == 3
    ml = ls.ml.create(project=project.id, url=backend.url, title="ClipSAM", is_interactive=False)
    assert ml.state == "CO", f"backend not connected: {ml}\n{backend.log_tail()}"
    ls.actions.create(
        id="retrieve_tasks_predictions",
        project=project.id,
        selected_items={"all": True, "excluded": []},
    )
    predictions: dict[int, list[Any]] = {}
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        predictions = {t: ls.predictions.list(task=t) for t in imported.task_ids}
        if all(predictions.values()):
            break
        time.sleep(1.0)
    assert all(predictions.values()), f"predictions missing\n{backend.log_tail()}"

    typed = 0
    for stored in predictions.values():
        result = stored[0].result
        brushes = [r for r in result if r["type"] == "brushlabels"]
        choices = [r for r in result if r["type"] == "choices"]
        for item in brushes:
            [label] = item["value"]["brushlabels"]
            assert label in TYPES, item["value"]
            assert 1 / len(TYPES) - 1e-4 <= item["score"] <= 1.0  # the type's probability
            alpha = np.asarray(decode_rle(item["value"]["rle"]), dtype=np.uint8)[3::4]
            assert alpha.any()
        if brushes:  # the image's type: that of its most anomalous region
            [choice] = choices
            assert choice["value"]["choices"][0] in {b["value"]["brushlabels"][0] for b in brushes}
            typed += 1
    assert typed >= 1, "no task got a typed region"
