"""Test doubles that are real modules: a head with a known map, and call counters."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from label_studio_sdk.converter.brush import mask2rle
from torch import Tensor

from clipsam.heads import AnomalyHead


class BlobHead(AnomalyHead):
    """Logits with clearly abnormal 2×2 blobs at ``spots`` (grid cells); normal elsewhere."""

    kind = "blob"

    def __init__(self, backbone_id: str, grid: int, spots: list[tuple[int, int]]) -> None:
        super().__init__(backbone_id, {})
        self.grid = grid
        self.spots = spots
        self.version = "blob"

    def forward(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        batch = features["stages"].shape[0]
        logits = torch.zeros(batch, 1, 2, self.grid, self.grid)
        logits[:, :, 0] = 5.0
        for y, x in self.spots:
            logits[:, :, 1, y : y + 2, x : x + 2] = 10.0
        return logits


def count_backbone_calls(pipeline) -> Counter:
    """Counts images through CLIP and SAM's encoder, decoder calls and prompts per call."""
    calls: Counter = Counter()

    def clip_hook(module, args, output):
        calls["clip_images"] += args[0].shape[0]

    def encoder_hook(module, args, output):
        calls["sam_images"] += args[0].shape[0]

    def decoder_hook(module, args, kwargs, output):
        calls["decoder_calls"] += 1
        calls[f"prompts_{kwargs['sparse_prompt_embeddings'].shape[0]}"] += 1

    pipeline.clip.visual.conv1.register_forward_hook(clip_hook)
    if pipeline.sam is not None:
        pipeline.sam.sam.image_encoder.register_forward_hook(encoder_hook)
        pipeline.sam.sam.mask_decoder.register_forward_hook(decoder_hook, with_kwargs=True)
    return calls


LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="defect" toName="image"><Label value="Defect"/></BrushLabels>
  <Choices name="verdict" toName="image"><Choice value="Defective"/><Choice value="Good"/></Choices>
</View>"""


def annotation_event(
    annotation_id: int,
    task_id: int,
    image_url: str,
    mask: np.ndarray,
    category: str = "widget",
    project: int = 3,
    action: str = "ANNOTATION_CREATED",
    label: str = "Defect",
) -> dict:
    """A webhook payload as Label Studio 1.23 sends it: the person's brush mask (none = good)
    with its ``label``."""
    height, width = mask.shape
    result = []
    if mask.any():
        rle = mask2rle(mask.astype(np.uint8) * 255)
        result.append({
            "id": f"r{annotation_id}", "type": "brushlabels", "from_name": "defect",
            "to_name": "image", "original_width": width, "original_height": height,
            "value": {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [label]},
        })  # fmt: skip
    result.append({
        "id": f"v{annotation_id}", "type": "choices", "from_name": "verdict", "to_name": "image",
        "original_width": width, "original_height": height,
        "value": {"choices": ["Defective" if mask.any() else "Good"]},
    })  # fmt: skip
    task = {"id": task_id, "project": project, "data": {"image": image_url, "category": category}}
    annotation = {
        "id": annotation_id, "task": task_id, "project": project, "result": result,
        "completed_by": 1, "was_cancelled": False, "ground_truth": False,
        "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:00Z",
    }  # fmt: skip
    return {
        "action": action,
        "project": {"id": project, "label_config": LABEL_CONFIG},
        "task": task,
        "annotation": annotation,
    }


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "the condition",
    *,
    interval: float = 0.1,
    context: Callable[[], str] | None = None,
):
    """Poll ``condition`` until it returns something truthy (returned), or fail after timeout;
    ``context`` adds to the failure message (e.g. a server's log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    details = f"\n{context()}" if context is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{details}")


_real_connect = socket.socket.connect


def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any connection to anything but loopback fail the test (a safety net for fixtures)."""

    def connect(self: socket.socket, address):  # type: ignore[no-untyped-def]
        host = address[0] if isinstance(address, tuple) else ""
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1"):
            raise AssertionError(f"test tried to connect to {address}")
        return _real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
