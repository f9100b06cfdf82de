"""Several defect labels against a real Label Studio 1.23: typed regions and a typed choice.

Run: ``.venv/bin/python -m pytest tests/e2e/test_defect_types.py -m labelstudio -q -x``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.e2e.conftest import connected_project, retrieve_predictions
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
    urls = [image_server.add(f"typed_{i}.png", synthetic_png(20 + i)[0]) for i in range(3)]
    project_id, task_ids, _ = connected_project(
        ls, backend, "ClipSAM defect types", LABEL_CONFIG, [{"image": url} for url in urls]
    )
    predictions = retrieve_predictions(ls, backend, project_id, task_ids, TIMEOUT)

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
