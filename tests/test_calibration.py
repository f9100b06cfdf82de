"""Calibrated thresholds: F1-max choice, the normalisation, head files, and the pipeline."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from clipsam.cache import FeatureCache
from clipsam.calibration import (
    Thresholds,
    calibrate_map,
    calibrate_score,
    f1_max_threshold,
    normalize_scores,
)
from clipsam.config import HeadConfig, MMRConfig
from clipsam.heads import AnomalyHead, build_head, load_head, read_head_metadata, save_head
from clipsam.pipeline import Pipeline
from clipsam.refine import find_components


class FaintHead(AnomalyHead):
    """Abnormal probability ``peak`` in a square of grid cells, ~0 elsewhere: a head whose maps
    never reach the fixed τ = 0.5 (issue 12: a trained head peaking at 0.13–0.31)."""

    kind = "faint"

    def __init__(self, backbone_id: str, grid: int, peak: float = 0.3) -> None:
        super().__init__(backbone_id, {})
        self.grid = grid
        self.peak = peak
        self.version = "faint"

    def forward(self, features: dict[str, Tensor], text: Tensor) -> Tensor:
        batch = features["stages"].shape[0]
        logits = torch.zeros(batch, 1, 2, self.grid, self.grid)
        logits[:, :, 1] = -12.0
        lo, hi = self.grid // 4, self.grid // 2
        logits[:, :, 1, lo:hi, lo:hi] = math.log(self.peak / (1 - self.peak))
        return logits


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.5, 0.9])
def test_normalisation_is_monotone_and_puts_the_threshold_at_one_half(threshold):
    x = np.linspace(0.0, 1.0, 1001)
    y = normalize_scores(x, threshold)
    assert np.all(np.diff(y) > 0)
    assert y[0] == 0.0 and y[-1] == pytest.approx(1.0)
    assert normalize_scores(np.array([threshold]), threshold)[0] == pytest.approx(0.5)
    torch_y = normalize_scores(torch.from_numpy(x), threshold)
    np.testing.assert_allclose(torch_y.numpy(), y)
    assert np.array_equal(normalize_scores(x, threshold) > 0.5, x > threshold)


def test_normalisation_clips_to_the_unit_interval():
    np.testing.assert_allclose(normalize_scores(np.array([-0.5, 1.5]), 0.3), [0.0, 1.0])


def test_f1_max_threshold_lies_between_the_scores_it_separates():
    assert f1_max_threshold([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == pytest.approx(0.25)
    # a positive scored between two negatives: keeping it (F1 6/7) beats dropping it (4/5)
    assert f1_max_threshold([0.1, 0.2, 0.15, 0.8, 0.9], [0, 0, 1, 1, 1]) == pytest.approx(0.125)
    assert f1_max_threshold([0.1, 0.2], [0, 0]) is None
    assert f1_max_threshold([0.1, 0.2], [1, 1]) is None


def test_f1_max_threshold_agrees_with_a_brute_force_search(rng):
    scores = rng.random(400)
    labels = rng.random(400) < scores * 0.6
    t = f1_max_threshold(scores, labels)
    assert t is not None

    def f1(cut):
        pred = scores > cut
        tp = (pred & labels).sum()
        return 2 * tp / (pred.sum() + labels.sum())

    assert f1(t) == pytest.approx(max(f1(c) for c in np.unique(scores) - 1e-12))


def test_thresholds_round_trip_through_head_files(tmp_path):
    head = build_head(HeadConfig(head="linear"), "bb", 8, 4, 2, 3)
    plain_version = save_head(head, tmp_path / "plain.safetensors")
    assert load_head(tmp_path / "plain.safetensors").thresholds is None
    assert "thresholds" not in read_head_metadata(tmp_path / "plain.safetensors")

    head.thresholds = Thresholds(pixel=0.2, image=0.35, source="held-out: 8 images")
    version = save_head(head, tmp_path / "calibrated.safetensors")
    loaded = load_head(tmp_path / "calibrated.safetensors")
    assert loaded.thresholds == head.thresholds
    assert version != plain_version  # a recalibrated head is a new model_version


def test_malformed_thresholds_in_metadata_mean_uncalibrated():
    assert Thresholds.from_dict(None) is None
    assert Thresholds.from_dict({"pixel": "x", "image": 1.5}) is None
    assert Thresholds.from_dict({"pixel": 0.3}) == Thresholds(pixel=0.3)


def test_a_calibrated_map_has_regions_where_the_raw_one_has_none():
    amap = np.zeros((64, 64), dtype=np.float32)
    amap[20:30, 20:30] = 0.3
    assert find_components(amap, MMRConfig()) == []
    calibrated = calibrate_map(torch.from_numpy(amap), Thresholds(pixel=0.2)).numpy()
    components = find_components(calibrated, MMRConfig())
    assert len(components) == 1 and components[0].mask.sum() == 100
    assert calibrate_map(torch.from_numpy(amap), None) is not None
    np.testing.assert_array_equal(calibrate_map(torch.from_numpy(amap), None).numpy(), amap)


def test_calibrated_score_sits_at_one_half_at_the_image_threshold():
    assert calibrate_score(0.35, Thresholds(image=0.35)) == pytest.approx(0.5)
    assert calibrate_score(0.35, Thresholds(pixel=0.2)) == 0.35
    assert calibrate_score(0.35, None) == 0.35


def _no_sam_pipeline(tiny_pipeline, head: AnomalyHead) -> Pipeline:
    """The shared tiny backbone without SAM, serving ``head`` (the shared pipeline untouched)."""
    config = dataclasses.replace(
        tiny_pipeline.config, mmr=dataclasses.replace(tiny_pipeline.config.mmr, use_sam=False)
    )
    clip = tiny_pipeline.clip
    return Pipeline(config, clip, None, head, FeatureCache(8), tiny_pipeline.device)


def test_pipeline_returns_regions_exactly_when_the_head_means_them(tiny_pipeline, rng):
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    head = FaintHead(tiny_pipeline.clip.backbone_id, tiny_pipeline.clip.grid, peak=0.3)
    pipeline = _no_sam_pipeline(tiny_pipeline, head)
    raw = pipeline.predict(image)[0]
    assert raw.regions == [] and raw.anomaly_map.max() < 0.31

    head.thresholds = Thresholds(pixel=0.2, image=0.2)
    calibrated = pipeline.predict(image)[0]
    assert len(calibrated.regions) == 1
    assert calibrated.score > raw.score
    # the normalisation keeps the order of pixels: the region is where the raw map was highest
    assert np.array_equal(calibrated.anomaly_map > 0.5, raw.anomaly_map > 0.2)

    head.thresholds = Thresholds(pixel=0.5)  # a head that means "not abnormal" at 0.3
    assert pipeline.predict(image)[0].regions == []
