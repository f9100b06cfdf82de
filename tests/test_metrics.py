"""Tests for clipsam.metrics against scikit-learn, brute force and the published reference code."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from clipsam import metrics
from clipsam.metrics import (
    METRIC_NAMES,
    aupro,
    aupro_aprilgan,
    evaluate,
    evaluate_per_class,
    format_table,
    image_ap,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
)

# --------------------------------------------------------------------------------------------
# Helpers: random data and slow oracles
# --------------------------------------------------------------------------------------------


def _random_case(
    seed: int, n: int = 4, h: int = 20, w: int = 20, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Maps correlated with masks that hold several blobs per image; last image defect-free."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n - 1):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, h - 3), rng.integers(0, w - 3)
            dr, dc = rng.integers(1, 5), rng.integers(1, 5)
            masks[i, r : r + dr, c : c + dc] = 1
    noise = ndimage.gaussian_filter(rng.random((n, h, w)), sigma=(0, 1, 1))
    maps = (noise + 0.15 * masks + 0.05 * rng.random((n, h, w))).astype(dtype)
    return maps, masks


def _f1_max_brute(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return float(best)


def _aupro_slow(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Straightforward PRO curve: one full pass per distinct threshold, then a clipped trapezoid."""
    gt = masks.astype(bool)
    regions = []
    for i, mask in enumerate(gt):
        labeled = measure.label(mask, connectivity=2)
        regions += [(i, labeled == k) for k in range(1, labeled.max() + 1)]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append(np.sum(pred & ~gt) / np.sum(~gt))
        ys.append(np.mean([np.sum(pred[i] & r) / np.sum(r) for i, r in regions]))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:], strict=True):
        if x1 <= fpr_limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            if x0 < fpr_limit:
                y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += 0.5 * (y0 + y_lim) * (fpr_limit - x0)
            break
    return area / fpr_limit


def cal_pro_score(masks, amaps, max_step=200, expect_fpr=0.3):
    """APRIL-GAN / AnomalyCLIP reference, copied verbatim (the oracle)."""
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs, ths = [], [], []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks, strict=True):
            for region in measure.regionprops(measure.label(mask)):
                tp_pixels = binary_amap[region.coords[:, 0], region.coords[:, 1]].sum()
                pro.append(tp_pixels / region.area)
        inverse_masks = 1 - masks
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        fpr = fp_pixels / inverse_masks.sum()
        pros.append(np.array(pro).mean())
        fprs.append(fpr)
        ths.append(th)
    pros, fprs, ths = np.array(pros), np.array(fprs), np.array(ths)
    idxes = fprs < expect_fpr
    fprs = fprs[idxes]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    pro_auc = auc(fprs, pros[idxes])
    return pro_auc


# --------------------------------------------------------------------------------------------
# Pixel and image curve metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_pixel_auroc_ap_match_sklearn(decimals: int | None) -> None:
    maps, masks = _random_case(0)
    if decimals is not None:  # ties, also between good and defect pixels
        maps = np.round(maps, decimals)
    y, s = masks.ravel().astype(bool), maps.ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    # a list of equal-size H×W maps and bool masks is accepted too
    assert pixel_auroc(list(maps), masks.astype(bool)) == pytest.approx(roc_auc_score(y, s))


def test_pixel_f1_max_matches_brute_force() -> None:
    maps, masks = _random_case(1, n=3, h=12, w=12)
    maps = np.round(maps, 2)  # ties
    expected = _f1_max_brute(maps.ravel(), masks.ravel().astype(bool))
    assert pixel_f1_max(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0


def test_image_metrics_match_sklearn_and_brute_force() -> None:
    rng = np.random.default_rng(2)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + 0.5 * labels, 1)  # ties
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_ap(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    assert image_f1_max(scores, labels.astype(int)) == pytest.approx(
        _f1_max_brute(scores, labels), abs=1e-12
    )


def test_perfect_and_reversed_image_scores() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    assert image_auroc([0.1, 0.2, 0.3, 0.4, 0.5], labels) == 1.0
    assert image_auroc([0.5, 0.4, 0.3, 0.2, 0.1], labels) == 0.0
    assert image_f1_max([0.1, 0.2, 0.3, 0.4, 0.5], labels) == 1.0


# --------------------------------------------------------------------------------------------
# AUPRO (MVTec AD reference)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_slow_reference(seed: int, fpr_limit: float) -> None:
    maps, masks = _random_case(seed, n=3, h=14, w=14)
    maps = np.round(maps, 2)  # ties between good and defect pixels exercise tie collapsing
    n_regions = sum(measure.label(m, connectivity=2).max() for m in masks)
    assert n_regions >= 3
    expected = _aupro_slow(maps, masks, fpr_limit)
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)
    assert 0.0 < expected < 1.0


def test_aupro_anomalib_reference_case() -> None:
    # One 400×7 image, defect = column 3 (one 8-connected component of 400 px, 2400 good px),
    # scores increase row-major. In descending order every row contributes 3 good pixels, the
    # defect pixel, then 3 good pixels: FPR +1/400 and PRO +1/400 per row, so the staircase has
    # the same area as the diagonal over every *whole* row. FPR = 1/3 falls 2 good pixels into
    # row 133 (from the bottom), where the staircase sits at PRO = 133/400 instead of the
    # diagonal: the exact value is a hair (1e-6) below 1/6.
    masks = np.tile(np.array([0, 0, 0, 1, 0, 0, 0]), (1, 400, 1))
    maps = (np.arange(2800) / 2800).reshape(1, 400, 7)
    exact = (133**2 / 2 / 400**2 + 133 / 400 * 2 / 2400) * 3
    result = aupro(maps, masks, fpr_limit=1 / 3)
    assert result == pytest.approx(exact, abs=1e-12)
    assert result == pytest.approx(1 / 6, abs=2e-6)

    # With 300 rows, FPR = 1/3 is a row boundary (600 of 1800 good pixels): exactly 1/6.
    masks300 = np.tile(np.array([0, 0, 0, 1, 0, 0, 0]), (1, 300, 1))
    maps300 = (np.arange(2100) / 2100).reshape(1, 300, 7)
    assert aupro(maps300, masks300, fpr_limit=1 / 3) == pytest.approx(1 / 6, abs=1e-12)


def test_aupro_perfect_and_inverted_maps() -> None:
    _, masks = _random_case(5)
    perfect = masks.astype(np.float32)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(1.0 - perfect, masks) == pytest.approx(0.0, abs=1e-12)
    graded = perfect + 0.01 * np.random.default_rng(0).random(masks.shape)  # no ties
    assert aupro(graded, masks) == pytest.approx(1.0, abs=1e-12)


def test_aupro_interpolates_exactly_at_the_limit() -> None:
    # One 1×12 image: pixels 0-3 are one defect region (area 4), pixels 4-11 are good (8).
    # Scores: region 0.9, 0.7, 0.05, 0.05; good 0.8, 0.7×4 (tied with a defect pixel), 0.1-0.3.
    # Curve: (0,0) (0,.25) (.125,.25) (.625,.5) ... - the tie group jumps past FPR 0.3, so PRO
    # at 0.3 is interpolated: .25 + .25 * (.3 - .125) / .5 = .3375.
    scores = [0.9, 0.7, 0.05, 0.05, 0.8, 0.7, 0.7, 0.7, 0.7, 0.1, 0.2, 0.3]
    maps = np.array(scores).reshape(1, 1, 12)
    masks = np.array([1] * 4 + [0] * 8).reshape(1, 1, 12)
    area = 0.125 * 0.25 + 0.5 * (0.25 + 0.3375) * (0.3 - 0.125)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(area / 0.3, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(_aupro_slow(maps, masks, 0.3))


def test_aupro_counts_components_with_8_connectivity() -> None:
    # Two diagonal pixels are ONE region under 8-connectivity (two under 4-connectivity).
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # one region of 2 px
    masks[0, 3, 3] = True  # a second region of 1 px
    maps = np.zeros((1, 4, 4))
    maps[0, 3, 3] = 1.0  # only the small region is found
    # Curve (0,0) (0,1/2) (1,1): PRO(0.3) = 0.65, area = 0.3 * (0.5 + 0.65) / 2 → 0.575.
    # (4-connectivity would give (0,1/3) (1,1) → 0.4333.)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.575, abs=1e-12)


def test_aupro_undefined_cases_are_nan(caplog: pytest.LogCaptureFixture) -> None:
    maps = np.random.default_rng(0).random((2, 5, 5))
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        assert math.isnan(aupro(maps, np.zeros((2, 5, 5))))
        assert math.isnan(aupro(maps, np.ones((2, 5, 5))))
    assert "aupro is undefined" in caplog.text
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, np.zeros((2, 5, 5)), fpr_limit=0.0)


# --------------------------------------------------------------------------------------------
# AUPRO (APRIL-GAN / AnomalyCLIP)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "dtype", "max_step"),
    [(6, np.float32, 200), (7, np.float64, 200), (8, np.float32, 37)],
)
def test_aupro_aprilgan_matches_reference_loop(seed: int, dtype: type, max_step: int) -> None:
    maps, masks = _random_case(seed, dtype=dtype)
    expected = cal_pro_score(masks, maps, max_step=max_step)
    assert aupro_aprilgan(maps, masks, max_step=max_step) == pytest.approx(expected, abs=1e-9)
    assert 0.0 < expected < 1.0


def test_aupro_aprilgan_matches_reference_on_scores_equal_to_thresholds() -> None:
    # Integer maps with delta = 1 put many pixels exactly on a threshold (positive iff score > th).
    maps, masks = _random_case(16)
    quantized = np.round((maps - maps.min()) * 60).astype(np.int64)
    step = int(quantized.max() - quantized.min())
    for max_step in (step, 2 * step, 200):
        expected = cal_pro_score(masks, quantized, max_step=max_step)
        result = aupro_aprilgan(quantized, masks, max_step=max_step)
        assert result == pytest.approx(expected, abs=1e-9)


def test_aupro_aprilgan_differs_from_mvtec_aupro() -> None:
    maps, masks = _random_case(9)
    assert abs(aupro_aprilgan(maps, masks) - aupro(maps, masks)) > 1e-3


def test_aupro_aprilgan_degenerate_cases_are_nan(caplog: pytest.LogCaptureFixture) -> None:
    _, masks = _random_case(10)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        assert math.isnan(aupro_aprilgan(np.full(masks.shape, 0.5), masks))  # constant map
        assert math.isnan(aupro_aprilgan(np.random.rand(*masks.shape), np.zeros_like(masks)))
        inverted = 1.0 - masks.astype(np.float32)  # FPR is 1 at every threshold
        assert math.isnan(aupro_aprilgan(inverted, masks))
    assert caplog.text.count("aupro_aprilgan is undefined") == 3


# --------------------------------------------------------------------------------------------
# evaluate, evaluate_per_class, format_table
# --------------------------------------------------------------------------------------------


def test_evaluate_returns_the_eight_metrics_in_order() -> None:
    maps, masks = _random_case(11)
    result = evaluate(maps, masks)
    assert list(result) == list(METRIC_NAMES)
    assert len(METRIC_NAMES) == 8
    assert all(0.0 <= v <= 1.0 for v in result.values())
    assert result["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks))
    assert result["aupro"] == pytest.approx(aupro(maps, masks))
    assert result["aupro_aprilgan"] == pytest.approx(aupro_aprilgan(maps, masks))
    # default image score = max of each map, label = mask.any()
    scores, labels = maps.reshape(len(maps), -1).max(1), masks.reshape(len(masks), -1).any(1)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    custom = evaluate(maps, masks, scores=-scores, labels=labels)
    assert custom["image_auroc"] == pytest.approx(1.0 - result["image_auroc"])
    assert custom["pixel_ap"] == result["pixel_ap"]


def test_evaluate_class_without_defects_is_nan(caplog: pytest.LogCaptureFixture) -> None:
    maps = np.random.default_rng(12).random((3, 8, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        result = evaluate(maps, np.zeros((3, 8, 8), dtype=bool))
    assert list(result) == list(METRIC_NAMES)
    assert all(math.isnan(v) for v in result.values())
    assert "undefined" in caplog.text


def test_evaluate_one_image_class_keeps_pixel_metrics() -> None:
    maps, masks = _random_case(13)
    result = evaluate(maps[:1], masks[:1])  # one defective image: image metrics undefined
    assert math.isnan(result["image_auroc"])
    assert not math.isnan(result["pixel_auroc"])
    assert not math.isnan(result["aupro"])


def test_evaluate_shape_errors() -> None:
    maps = np.zeros((3, 8, 8))
    with pytest.raises(
        ValueError,
        match=r"maps and masks must have the same shape, got \(3, 8, 8\) and \(3, 8, 9\)",
    ):
        evaluate(maps, np.zeros((3, 8, 9)))
    with pytest.raises(ValueError, match="expected 3 image scores"):
        evaluate(maps, np.zeros((3, 8, 8)), scores=np.zeros(2), labels=np.zeros(2))
    with pytest.raises(ValueError, match="same length"):
        evaluate(maps, np.zeros((3, 8, 8)), scores=np.zeros(3), labels=np.zeros(2))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        evaluate(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="same size"):
        evaluate([np.zeros((8, 8)), np.zeros((8, 9))], np.zeros((2, 8, 8)))


def test_evaluate_per_class_mean_and_table() -> None:
    a = _random_case(14)
    b = _random_case(15)
    empty = (np.random.default_rng(0).random((2, 6, 6)), np.zeros((2, 6, 6)))
    results = evaluate_per_class({"a": a, "b": (*b, None, None), "empty": empty})
    assert list(results) == ["a", "b", "empty", "mean"]
    for key in METRIC_NAMES:  # nanmean: the class with no defects does not count
        expected = (results["a"][key] + results["b"][key]) / 2
        assert results["mean"][key] == pytest.approx(expected)

    table = format_table(results)
    lines = table.splitlines()
    assert lines[0] == "| class | " + " | ".join(METRIC_NAMES) + " |"
    assert len(lines) == 2 + 4
    assert lines[-1].startswith("| mean | ")
    assert f"{100 * results['a']['pixel_auroc']:.1f}" in lines[2]
    assert "nan" in lines[4]

    with pytest.raises(ValueError, match="reserved"):
        evaluate_per_class({"mean": a})
