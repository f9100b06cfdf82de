"""The promotion gate compares what the annotator sees, not only how pixels rank (issue 12).

A head whose maps peak under its own threshold on the held-out defects shows the annotator
nothing, however well it ranks pixels; it must never be promoted.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from clipsam.calibration import Thresholds
from clipsam.heads import AnomalyHead
from correction_loop.registry import ModelRegistry
from correction_loop.retrain import judge_head
from training.trainer import TrainingSample

AUROC_ONLY = {"pixel_auroc": 0.80}
SEES = {"region_dice": 0.40, "defect_images_with_regions": 1.0}


class SquareHead(AnomalyHead):
    """Abnormal probability ``peak`` on grid cells [lo, hi)², ~0 elsewhere."""

    kind = "square"

    def __init__(self, backbone_id: str, grid: int, lo: int, hi: int, peak: float) -> None:
        super().__init__(backbone_id, {})
        self.grid, self.lo, self.hi, self.peak = grid, lo, hi, peak
        self.version = f"square-{lo}-{hi}-{peak}"

    def forward(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        batch = features["stages"].shape[0]
        logits = torch.zeros(batch, 1, 2, self.grid, self.grid)
        logits[:, :, 1] = -12.0
        logits[:, :, 1, self.lo : self.hi, self.lo : self.hi] = math.log(
            self.peak / (1 - self.peak)
        )
        return logits


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(tmp_path / "model")


@pytest.mark.parametrize(
    ("candidate", "serving", "expected", "says"),
    [
        # Better AUROC, but nothing shown on the held-out defects: never promoted.
        ({"pixel_auroc": 0.99, "region_dice": 0.0, "defect_images_with_regions": 0.0},
         {**AUROC_ONLY, **SEES}, False, "returns no region on held-out defects"),
        # ... not even when nothing serves yet.
        ({"pixel_auroc": 0.99, "region_dice": 0.0, "defect_images_with_regions": 0.0},
         None, False, "returns no region"),
        # No held-out defects to tell: not promoted either.
        ({"pixel_auroc": 0.99, "region_dice": math.nan,
          "defect_images_with_regions": math.nan}, None, False, "returns no region"),
        # Better on both: promoted.
        ({"pixel_auroc": 0.90, "region_dice": 0.50, "defect_images_with_regions": 1.0},
         {**AUROC_ONLY, **SEES}, True, "region_dice 0.5000 >= serving 0.4000"),
        # Better AUROC, worse Dice at its own threshold: rejected.
        ({"pixel_auroc": 0.90, "region_dice": 0.30, "defect_images_with_regions": 1.0},
         {**AUROC_ONLY, **SEES}, False, "region_dice 0.3000 < serving 0.4000"),
        # Better Dice, worse AUROC: rejected (both must hold).
        ({"pixel_auroc": 0.70, "region_dice": 0.50, "defect_images_with_regions": 1.0},
         {**AUROC_ONLY, **SEES}, False, "pixel_auroc 0.7000 < serving 0.8000"),
        # A serving head judged before the region gate: the candidate's Dice wins by default.
        ({"pixel_auroc": 0.90, "region_dice": 0.10, "defect_images_with_regions": 0.5},
         AUROC_ONLY, True, "region_dice 0.1000 >= serving nan"),
        # Candidate metrics without region keys: AUROC alone, as before.
        (AUROC_ONLY, {"pixel_auroc": 0.70, "region_dice": 0.9}, True, "pixel_auroc 0.8000 >="),
    ],
)  # fmt: skip
def test_decide_on_regions(registry, candidate, serving, expected, says):
    ok, reason = registry.decide("cand", candidate, serving)
    assert ok is expected, reason
    assert reason.startswith(("promote cand" if expected else "reject cand") + ": pixel_auroc")
    assert says in reason


def test_region_tolerance(registry):
    candidate = {"pixel_auroc": 0.9, "region_dice": 0.38, "defect_images_with_regions": 1.0}
    assert not registry.decide("c", candidate, {**AUROC_ONLY, **SEES})[0]
    assert registry.decide("c", candidate, {**AUROC_ONLY, **SEES}, region_tolerance=0.05)[0]
    with pytest.raises(ValueError, match="nan"):
        registry.decide("c", candidate, None, region_tolerance=math.nan)


def test_a_head_peaking_under_its_threshold_is_refused_despite_a_higher_auroc(
    tiny_pipeline, registry
):
    """Real heads through the retrain job's own judge (``judge_head``) and the registry."""
    clip = tiny_pipeline.clip
    size, grid = clip.config.image_size, clip.grid
    features = {
        "stages": torch.zeros(len(clip.config.layers), grid * grid, clip.width),
        "global": torch.zeros(clip.embed_dim),
        "vv": torch.zeros(grid * grid, clip.embed_dim),
    }
    lo, hi = grid // 4, grid // 2
    mask = np.zeros((size, size), dtype=np.float32)
    mask[size * lo // grid : size * hi // grid, size * lo // grid : size * hi // grid] = 1
    held_out = [
        TrainingSample(features, torch.from_numpy(mask), "widget"),
        TrainingSample(features, torch.zeros(size, size), "widget"),
    ]
    # The candidate ranks the defect's pixels perfectly, but peaks at 0.3 under its τ of 0.4.
    candidate = SquareHead(clip.backbone_id, grid, lo, hi, peak=0.3)
    candidate.thresholds = Thresholds(pixel=0.4)
    # The serving head is off by one cell (a worse AUROC) but shows the annotator the defect.
    serving = SquareHead(clip.backbone_id, grid, lo + 1, hi + 1, peak=0.9)
    new, old = (
        judge_head(tiny_pipeline, candidate, held_out),
        judge_head(tiny_pipeline, serving, held_out),
    )
    assert new["pixel_auroc"] > old["pixel_auroc"]
    assert new["defect_images_with_regions"] == 0.0 and old["region_dice"] > 0.3
    ok, reason = registry.decide("cand", new, old)
    assert not ok and "returns no region on held-out defects" in reason
    # At a threshold it crosses, the same head shows the defect and wins on both.
    candidate.thresholds = Thresholds(pixel=0.2)
    ok, reason = registry.decide("cand", judge_head(tiny_pipeline, candidate, held_out), old)
    assert ok, reason
