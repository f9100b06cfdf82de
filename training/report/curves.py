"""The report's curves: pixel-level ROC/PR from histograms, image-level ROC/PR exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

#: Thresholds of the pixel-level curves. The table's numbers are exact; curves are for the eye.
CURVE_BINS = 1000


def pixel_curves(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], bins: int = CURVE_BINS
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """Pixel ROC ``(fpr, tpr)`` and PR ``(recall, precision)`` at ``bins`` thresholds.

    Histograms instead of scikit-learn's curves: those sort every pixel of the class (hundreds
    of millions on MVTec), which a plot does not need. None when one class of pixel is missing.
    """
    pos = np.zeros(bins, dtype=np.int64)
    neg = np.zeros(bins, dtype=np.int64)
    for amap, mask in zip(maps, masks, strict=True):
        idx = np.minimum((np.clip(amap, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
        pos += np.bincount(idx[mask], minlength=bins)
        neg += np.bincount(idx[~mask], minlength=bins)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    moves = (pos + neg)[::-1] > 0  # thresholds (high to low) where the curve moves at all
    tp = np.cumsum(pos[::-1])[moves]
    fp = np.cumsum(neg[::-1])[moves]
    roc = (np.concatenate(([0.0], fp / n_neg)), np.concatenate(([0.0], tp / n_pos)))
    called = tp + fp > 0
    precision = tp[called] / (tp + fp)[called]
    recall = tp[called] / n_pos
    pr = (np.concatenate(([0.0], recall)), np.concatenate(([precision[0]], precision)))
    return roc, pr


def image_curves(
    scores: Sequence[float], labels: Sequence[int]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """Exact image-level ROC and PR curves (few points); None without both good and defect."""
    y = np.asarray(labels) > 0
    if y.all() or not y.any():
        return None
    s = np.asarray(scores, dtype=np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    return (fpr, tpr), (recall[::-1], precision[::-1])
