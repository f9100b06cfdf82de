"""Region metrics at each head's own threshold (what a promotion gate should compare)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clipsam.calibration import Thresholds
from clipsam.config import MMRConfig
from tests.test_calibration import FaintHead
from training.region_metrics import head_region_metrics, region_metrics, returns_regions
from training.trainer import TrainingSample


def _square(shape, y0, y1, x0, x1, value=1.0):
    out = np.zeros(shape, dtype=np.float32)
    out[y0:y1, x0:x1] = value
    return out


def test_perfect_prediction_scores_one():
    mask = _square((32, 32), 4, 12, 4, 12) > 0
    good = np.zeros((32, 32), dtype=bool)
    result = region_metrics([mask * 0.9, good * 0.9], [mask, good])
    assert result == {
        "region_dice": 1.0, "region_precision": 1.0, "region_recall": 1.0, "region_f1": 1.0,
        "defect_images_with_regions": 1.0, "good_images_with_regions": 0.0,
    }  # fmt: skip


def test_counts_regions_dice_and_false_alarms():
    shape = (40, 40)
    mask = (_square(shape, 0, 10, 0, 10) + _square(shape, 20, 30, 20, 30)) > 0  # two defects
    amap = _square(shape, 0, 10, 0, 5, 0.8) + _square(shape, 35, 40, 35, 40, 0.8)  # half + FP
    good_map = _square(shape, 0, 4, 0, 4, 0.9)
    result = region_metrics([amap, good_map], [mask, np.zeros(shape, bool)])
    assert result["region_precision"] == pytest.approx(1 / 3)  # 1 of 3 regions touches a defect
    assert result["region_recall"] == pytest.approx(1 / 2)  # 1 of 2 defects found
    assert result["region_f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert result["region_dice"] == pytest.approx(2 * 50 / (75 + 200))
    assert result["good_images_with_regions"] == 1.0


def test_a_head_under_tau_returns_nothing_and_scores_zero():
    mask = _square((32, 32), 4, 12, 4, 12) > 0
    faint = mask * 0.3
    result = region_metrics([faint], [mask])
    assert result["region_dice"] == 0.0 and result["region_f1"] == 0.0
    assert not returns_regions(result)
    assert returns_regions(region_metrics([faint], [mask], MMRConfig(tau=0.2)))


def test_undefined_parts_are_nan_not_zero():
    result = region_metrics([np.zeros((8, 8))], [np.zeros((8, 8), bool)])
    assert math.isnan(result["region_dice"]) and math.isnan(result["region_f1"])
    assert not returns_regions(result)


def test_each_head_is_judged_at_its_own_threshold(tiny_pipeline):
    clip = tiny_pipeline.clip
    size, grid = clip.config.image_size, clip.grid
    features = {
        "stages": torch.zeros(len(clip.config.layers), grid * grid, clip.width),
        "global": torch.zeros(clip.embed_dim),
        "vv": torch.zeros(grid * grid, clip.embed_dim),
    }
    lo, hi = size * (grid // 4) // grid, size * (grid // 2) // grid
    mask = torch.from_numpy(_square((size, size), lo, hi, lo, hi))
    samples = [TrainingSample(features, mask, "widget")]
    head = FaintHead(clip.backbone_id, grid, peak=0.3)
    raw = head_region_metrics(tiny_pipeline, head, samples)
    assert not returns_regions(raw) and raw["region_dice"] == 0.0
    head.thresholds = Thresholds(pixel=0.2)
    calibrated = head_region_metrics(tiny_pipeline, head, samples)
    assert returns_regions(calibrated) and calibrated["region_dice"] > 0.8
