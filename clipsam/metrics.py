"""Anomaly-detection metrics: pixel/image AUROC, AP, F1-max and two flavours of AUPRO.

Maps are ``(N, H, W)`` float arrays (or a list of equal-size ``H×W`` arrays), masks the same shape
with mask values ``> 0.5`` counting as defect. All values are fractions in ``[0, 1]``; a metric
the data leaves undefined (e.g. only one class present) is ``nan`` with a logged warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

logger = logging.getLogger(__name__)

#: Keys returned by :func:`evaluate`, in order.
METRIC_NAMES: tuple[str, ...] = (
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "aupro",
    "aupro_aprilgan",
    "image_auroc",
    "image_ap",
    "image_f1_max",
)

#: 8-connectivity, as in the MVTec AD reference evaluation (and skimage's default for 2-D).
_STRUCTURE = np.ones((3, 3), dtype=int)

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _as_maps(maps: npt.ArrayLike) -> np.ndarray:
    """Return ``maps`` as an ``(N, H, W)`` float32/float64 array (an ``H×W`` map becomes N=1).

    float32/float64 are kept as they are (no copy); small types go to float32 and wide integers
    to float64, both exactly.
    """
    try:
        arr = np.asarray(maps)
    except ValueError as exc:  # ragged list of maps
        raise ValueError(f"maps must all have the same size: {exc}") from exc
    if arr.dtype == object:
        raise ValueError("maps must all have the same size")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"maps must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float32 if arr.dtype.itemsize <= 2 else np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("maps contain NaN or infinite values")
    return arr


def _as_masks(masks: npt.ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``masks`` as a bool array of ``shape`` (values > 0.5 are defect)."""
    try:
        arr = np.asarray(masks)
    except ValueError as exc:
        raise ValueError(f"masks must all have the same size: {exc}") from exc
    if arr.ndim == 2 and len(shape) == 3 and shape[0] == 1:
        arr = arr[None]
    if arr.shape != shape:
        raise ValueError(f"maps and masks must have the same shape, got {shape} and {arr.shape}")
    if arr.dtype == bool:
        return arr
    return arr > 0.5


def _maps_masks(maps: npt.ArrayLike, masks: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    amaps = _as_maps(maps)
    return amaps, _as_masks(masks, amaps.shape)


def _scores_labels(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return 1-D float scores and bool labels of equal length."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1 or s.shape != y.shape:
        raise ValueError(
            f"scores and labels must be 1-D with the same length, got {s.shape} and {y.shape}"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s, (y if y.dtype == bool else y > 0.5)


def _undefined(metric: str, why: str) -> float:
    logger.warning("%s is undefined (%s); reporting nan", metric, why)
    return _NAN


def _two_classes(metric: str, y: np.ndarray) -> bool:
    """True when ``y`` has both classes; otherwise logs why ``metric`` is undefined."""
    n_pos = int(np.count_nonzero(y))
    if y.size == 0:
        _undefined(metric, "no samples")
        return False
    if n_pos == 0:
        _undefined(metric, "no positive (defect) samples")
        return False
    if n_pos == y.size:
        _undefined(metric, "no negative (good) samples")
        return False
    return True


# --------------------------------------------------------------------------------------------
# Image-level curve metrics (scikit-learn)
# --------------------------------------------------------------------------------------------


def _auroc(metric: str, y: np.ndarray, s: np.ndarray) -> float:
    if not _two_classes(metric, y):
        return _NAN
    return float(roc_auc_score(y, s))


def _ap(metric: str, y: np.ndarray, s: np.ndarray) -> float:
    if not np.any(y):
        return _undefined(metric, "no positive (defect) samples")
    return float(average_precision_score(y, s))


def _f1_max(metric: str, y: np.ndarray, s: np.ndarray) -> float:
    if not np.any(y):
        return _undefined(metric, "no positive (defect) samples")
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(
        2.0 * precision * recall, denom, out=np.zeros_like(denom, dtype=np.float64), where=denom > 0
    )
    return float(f1.max())


def image_auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Image-level ROC AUC; scores and labels are 1-D of length N."""
    s, y = _scores_labels(scores, labels)
    return _auroc("image_auroc", y, s)


def image_ap(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Image-level average precision; scores and labels are 1-D of length N."""
    s, y = _scores_labels(scores, labels)
    return _ap("image_ap", y, s)


def image_f1_max(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Best image-level F1 over all thresholds; scores and labels are 1-D of length N."""
    s, y = _scores_labels(scores, labels)
    return _f1_max("image_f1_max", y, s)


# --------------------------------------------------------------------------------------------
# Pixel-level curve metrics
#
# scikit-learn's curves argsort all N·H·W scores (≈15 s per metric for 100×518×518 on 2 cores).
# The same numbers follow from the sorted good-pixel scores plus the (few) defect-pixel scores:
# counts above each defect score come from np.searchsorted, and AP / F1-max only change at
# defect scores. Tests check equality with scikit-learn.
# --------------------------------------------------------------------------------------------


def _auroc_sorted(metric: str, neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC = P(pos > neg) + P(pos == neg)/2; ``neg`` sorted ascending."""
    if pos.size == 0:
        return _undefined(metric, "no positive (defect) samples")
    if neg.size == 0:
        return _undefined(metric, "no negative (good) samples")
    below = int(np.searchsorted(neg, pos, side="left").sum(dtype=np.int64))
    below_or_tied = int(np.searchsorted(neg, pos, side="right").sum(dtype=np.int64))
    return (below + below_or_tied) / (2 * pos.size * neg.size)


def _pos_thresholds(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, ...]:
    """At each distinct positive score t (ascending): (#pos == t, TP = #pos >= t, FP = #neg >= t).

    ``neg`` and ``pos`` sorted ascending.
    """
    values, counts = np.unique(pos, return_counts=True)
    tp = pos.size - np.concatenate(([0], np.cumsum(counts)[:-1]))
    fp = neg.size - np.asarray(np.searchsorted(neg, values, side="left"))
    return counts, tp, fp


def _ap_sorted(metric: str, neg: np.ndarray, pos: np.ndarray) -> float:
    """AP = Σ ΔRecall · Precision over thresholds, as scikit-learn; both inputs sorted."""
    if pos.size == 0:
        return _undefined(metric, "no positive (defect) samples")
    counts, tp, fp = _pos_thresholds(neg, pos)
    return float(np.sum(counts / pos.size * (tp / (tp + fp))))


def _f1_max_sorted(metric: str, neg: np.ndarray, pos: np.ndarray) -> float:
    """max 2TP / (TP + FP + #pos); the best threshold is always a positive score."""
    if pos.size == 0:
        return _undefined(metric, "no positive (defect) samples")
    _, tp, fp = _pos_thresholds(neg, pos)
    return float(np.max(2.0 * tp / (tp + fp + pos.size)))


def _split_sorted(amaps: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of good and of defect pixels, each sorted ascending (1-D, map dtype)."""
    return np.sort(amaps[~gt]), np.sort(amaps[gt])


def pixel_auroc(maps: npt.ArrayLike, masks: npt.ArrayLike) -> float:
    """Pixel-level ROC AUC over all pixels of all images; maps/masks ``(N, H, W)``."""
    return _auroc_sorted("pixel_auroc", *_split_sorted(*_maps_masks(maps, masks)))


def pixel_ap(maps: npt.ArrayLike, masks: npt.ArrayLike) -> float:
    """Pixel-level average precision (step-wise area under the PR curve); ``(N, H, W)``."""
    return _ap_sorted("pixel_ap", *_split_sorted(*_maps_masks(maps, masks)))


def pixel_f1_max(maps: npt.ArrayLike, masks: npt.ArrayLike) -> float:
    """Best pixel F1 over all thresholds (``max 2PR/(P+R)`` on the PR curve); ``(N, H, W)``."""
    return _f1_max_sorted("pixel_f1_max", *_split_sorted(*_maps_masks(maps, masks)))


# --------------------------------------------------------------------------------------------
# AUPRO, MVTec AD reference flavour
# --------------------------------------------------------------------------------------------


def _defect_weights(gt: np.ndarray) -> tuple[np.ndarray, int]:
    """``1/area`` of its 8-connected component for every defect pixel, in ``gt`` (C) order.

    Returns the 1-D weights aligned with ``amaps[gt]`` and the number of components.
    """
    parts = []
    n_regions = 0
    for mask in gt:
        labeled, n = ndimage.label(mask, structure=_STRUCTURE)
        if n == 0:
            continue
        ids = labeled[mask]
        parts.append(1.0 / np.bincount(ids)[ids])
        n_regions += n
    weights = np.concatenate(parts) if parts else np.zeros(0)
    return weights, n_regions


def _pro_curve(
    neg: np.ndarray, amaps: np.ndarray, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(FPR, PRO) curve of MVTec's ``compute_pro``, without its collinear points; None if undefined.

    Sweeping thresholds downwards, each good pixel adds ``1/num_good`` to the FPR and each defect
    pixel ``1/(area of its component)/num_components`` to the PRO; runs of equal scores move
    together. Between distinct defect scores the curve is flat, so it is enough to list, for
    each distinct defect score d (descending), the points (#good > d, PRO before d) and
    (#good >= d, PRO after d). ``neg``: good-pixel scores sorted ascending.
    """
    weights, n_regions = _defect_weights(gt)
    n_good = neg.size
    if n_regions == 0:
        _undefined("aupro", "no defect regions in the masks")
        return None
    if n_good == 0:
        _undefined("aupro", "no good pixels in the masks")
        return None

    d_scores = amaps[gt]
    order = np.argsort(d_scores)[::-1]
    d_sorted = d_scores[order]
    last = np.append(d_sorted[1:] != d_sorted[:-1], True)  # last index of each run of ties
    values = d_sorted[last]
    pro_after = np.minimum(np.cumsum(weights[order])[last] / n_regions, 1.0)
    pro_before = np.concatenate(([0.0], pro_after[:-1]))
    fpr_before = (n_good - np.searchsorted(neg, values, side="right")) / n_good
    fpr_after = (n_good - np.searchsorted(neg, values, side="left")) / n_good

    fprs = np.empty(2 * values.size + 3)
    pros = np.empty_like(fprs)
    fprs[0], pros[0] = 0.0, 0.0
    fprs[1:-2:2], pros[1:-2:2] = fpr_before, pro_before
    fprs[2:-2:2], pros[2:-2:2] = fpr_after, pro_after
    fprs[-2:], pros[-2] = 1.0, pro_after[-1]  # remaining good pixels, then (1, 1) as MVTec does
    pros[-1] = 1.0
    return fprs, pros


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` for ``x <= x_max``, interpolating ``y`` at ``x_max``.

    ``x`` is non-decreasing; matches MVTec's ``trapezoid(x, y, x_max)``.
    """
    ins = int(np.searchsorted(x, x_max, side="right"))  # == bisect.bisect(x, x_max)
    correction = 0.0
    if x[ins - 1] != x_max and ins < len(x):
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_interp = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        correction = 0.5 * (y_interp + y0) * (x_max - x0)
    xs, ys = x[:ins], y[:ins]
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * (xs[1:] - xs[:-1])) + correction)


def aupro(maps: npt.ArrayLike, masks: npt.ArrayLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD reference metric).

    Per-region overlap averages recall over ground-truth components (8-connected, per image),
    so small defects count as much as large ones. Integrated with the trapezoid rule exactly up
    to ``fpr_limit`` and divided by it, so a perfect map gives 1.0. maps/masks ``(N, H, W)``.
    """
    _check_limit(fpr_limit)
    amaps, gt = _maps_masks(maps, masks)
    return _aupro(np.sort(amaps[~gt]), amaps, gt, fpr_limit)


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _aupro(neg: np.ndarray, amaps: np.ndarray, gt: np.ndarray, fpr_limit: float) -> float:
    curve = _pro_curve(neg, amaps, gt)
    if curve is None:
        return _NAN
    fprs, pros = curve
    return _trapezoid_to(fprs, pros, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------------------------
# AUPRO, APRIL-GAN / AnomalyCLIP flavour
# --------------------------------------------------------------------------------------------


def aupro_aprilgan(
    maps: npt.ArrayLike, masks: npt.ArrayLike, max_step: int = 200, expect_fpr: float = 0.3
) -> float:
    """AUPRO as published by APRIL-GAN/AnomalyCLIP (``cal_pro_score``), vectorised.

    Thresholds are ``np.arange(min, max, (max - min) / max_step)``; points with
    FPR < ``expect_fpr`` are kept, their FPRs min-max rescaled to [0, 1] and the PRO integrated
    with ``sklearn.metrics.auc``. Numbers are not comparable with :func:`aupro`.
    maps/masks ``(N, H, W)``; float32/float64 maps keep their dtype so thresholds match the
    reference bit for bit.
    """
    return _aupro_aprilgan(*_maps_masks(maps, masks), max_step, expect_fpr)


def _aupro_aprilgan(amaps: np.ndarray, gt: np.ndarray, max_step: int, expect_fpr: float) -> float:
    n_bg = int(gt.size - np.count_nonzero(gt))
    if not gt.any():
        return _undefined("aupro_aprilgan", "no defect regions in the masks")
    if n_bg == 0:
        return _undefined("aupro_aprilgan", "no good pixels in the masks")
    min_th, max_th = amaps.min(), amaps.max()
    if not min_th < max_th:
        return _undefined("aupro_aprilgan", "the anomaly maps are constant")
    delta = (max_th - min_th) / max_step
    ths = np.arange(min_th, max_th, delta)
    n_buckets = len(ths) + 1

    # bucket b = number of thresholds strictly below the score: positive at th_j iff j < b.
    bg_hist = np.zeros(n_buckets, dtype=np.int64)
    region_hists = []
    for amap, mask in zip(amaps, gt, strict=True):
        bucket = np.searchsorted(ths, amap.ravel(), side="left")
        labeled, n = ndimage.label(mask, structure=_STRUCTURE)
        flat = labeled.ravel()
        fg = flat > 0
        bg_hist += np.bincount(bucket[~fg], minlength=n_buckets)
        if n:
            key = (flat[fg] - 1) * n_buckets + bucket[fg]
            hist = np.bincount(key, minlength=n * n_buckets).reshape(n, n_buckets)
            region_hists.append(hist)
    hists = np.concatenate(region_hists)  # (regions, buckets)

    # Reverse cumulative sums: count of pixels with bucket >= b; positives at th_j are b >= j + 1.
    region_ge = np.cumsum(hists[:, ::-1], axis=1)[:, ::-1]
    areas = region_ge[:, 0]
    overlap = np.ascontiguousarray((region_ge[:, 1:] / areas[:, None]).T)  # (thresholds, regions)
    pros = overlap.mean(axis=1)
    fprs = np.cumsum(bg_hist[::-1])[::-1][1:] / n_bg

    idxes = fprs < expect_fpr
    if np.count_nonzero(idxes) < 2:
        return _undefined("aupro_aprilgan", f"fewer than 2 thresholds with FPR < {expect_fpr}")
    fprs = fprs[idxes]
    span = fprs.max() - fprs.min()
    if span == 0:
        return _undefined("aupro_aprilgan", f"all thresholds with FPR < {expect_fpr} tie")
    fprs = (fprs - fprs.min()) / span
    return float(auc(fprs, pros[idxes]))


# --------------------------------------------------------------------------------------------
# One class, many classes, table
# --------------------------------------------------------------------------------------------


def evaluate(
    maps: npt.ArrayLike,
    masks: npt.ArrayLike,
    scores: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    *,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All :data:`METRIC_NAMES` for one class, as fractions; undefined ones are nan.

    maps/masks ``(N, H, W)``; scores/labels 1-D of length N, defaulting to each map's maximum
    and to whether its mask has any defect pixel.
    """
    _check_limit(fpr_limit)
    amaps, gt = _maps_masks(maps, masks)
    n = amaps.shape[0]
    if scores is None:
        scores = amaps.reshape(n, -1).max(axis=1) if amaps.size else np.zeros(n)
    if labels is None:
        labels = gt.reshape(n, -1).any(axis=1)
    s, y = _scores_labels(scores, labels)
    if s.shape[0] != n:
        raise ValueError(f"expected {n} image scores/labels (one per map), got {s.shape[0]}")

    neg, pos = _split_sorted(amaps, gt)  # one sort shared by the pixel metrics and AUPRO
    return {
        "pixel_auroc": _auroc_sorted("pixel_auroc", neg, pos),
        "pixel_ap": _ap_sorted("pixel_ap", neg, pos),
        "pixel_f1_max": _f1_max_sorted("pixel_f1_max", neg, pos),
        "aupro": _aupro(neg, amaps, gt, fpr_limit),
        "aupro_aprilgan": _aupro_aprilgan(amaps, gt, 200, fpr_limit),
        "image_auroc": _auroc("image_auroc", y, s),
        "image_ap": _ap("image_ap", y, s),
        "image_f1_max": _f1_max("image_f1_max", y, s),
    }


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else _NAN


def evaluate_per_class(
    per_class: Mapping[str, Sequence[Any]], *, fpr_limit: float = 0.3
) -> dict[str, dict[str, float]]:
    """:func:`evaluate` for each class plus a ``"mean"`` entry (unweighted nanmean over classes).

    ``per_class[name]`` is ``(maps, masks)`` or ``(maps, masks, scores, labels)``; scores and
    labels may be None.
    """
    if "mean" in per_class:
        raise ValueError('"mean" is reserved for the average and cannot be a class name')
    results: dict[str, dict[str, float]] = {}
    for name, data in per_class.items():
        if len(data) not in (2, 4):
            raise ValueError(
                f"class {name!r}: expected (maps, masks) or (maps, masks, scores, labels), "
                f"got a tuple of {len(data)}"
            )
        results[name] = evaluate(*data, fpr_limit=fpr_limit)
    results["mean"] = mean_row(results)
    return results


def mean_row(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The ``"mean"`` row: each metric's unweighted mean over the classes, NaNs left out."""
    return {key: _nanmean([row[key] for row in per_class.values()]) for key in METRIC_NAMES}


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table, one row per class (in the given order), values ×100 with one decimal."""
    columns: list[str] = [k for k in METRIC_NAMES if any(k in r for r in results.values())]
    for row in results.values():
        columns.extend(k for k in row if k not in columns)
    lines = [
        "| class | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in results.items():
        cells = []
        for key in columns:
            value = row.get(key)
            if value is None:
                cells.append("")
            elif math.isnan(value):
                cells.append("nan")
            else:
                cells.append(f"{100.0 * value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
