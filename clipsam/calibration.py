"""Calibrated thresholds: a head's own operating points, and maps normalised so they sit at 0.5.

A trained head carries thresholds chosen on its held-out data: the pixel threshold at the
F1-max point of the held-out pixels, and the image threshold at the F1-max point of the
held-out image scores. As anomalib does, the pipeline then *normalises* rather than moving τ:
a monotone piecewise-linear map sends [0, t] → [0, 0.5] and [t, 1] → [0.5, 1], so the fixed
τ = 0.5 of MMR (and the backend's verdict threshold 0.5) mean "the head's own threshold" for
every head. Orders are kept, so AUROC, AP, F1-max and AUPRO@0.3 do not change. A head without
thresholds is left exactly as it was.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

#: Where a calibrated threshold lands after :func:`normalize_scores`.
CALIBRATED_LEVEL = 0.5
#: Thresholds are kept this far inside (0, 1), so both linear pieces stay finite.
_MARGIN = 1e-6

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


@dataclass(frozen=True)
class Thresholds:
    """A head's calibrated operating points; ``None`` where none could be chosen.

    ``pixel`` applies to the coarse map (mean over stages, in [0, 1]); ``image`` to the image
    score after the pixel normalisation. ``source`` says what they were chosen on.
    """

    pixel: float | None = None
    image: float | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Thresholds | None:
        """From head metadata; ``None`` for absent or malformed entries (old heads)."""
        if not isinstance(data, dict):
            return None

        def level(value: Any) -> float | None:
            ok = isinstance(value, (int, float)) and math.isfinite(value) and 0 < value < 1
            return float(value) if ok else None

        thresholds = cls(
            level(data.get("pixel")), level(data.get("image")), str(data.get("source", ""))
        )
        return thresholds if thresholds.pixel is not None or thresholds.image is not None else None


def f1_max_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float | None:
    """The score threshold t where ``score > t`` has the highest F1 against ``labels``.

    scikit-learn's curve predicts ``score >= thresholds[i]``; t is placed halfway between that
    score and the next lower one, so ``>`` and ``>=`` agree on every sample. ``None`` when the
    labels are all of one kind (no F1-max point to speak of).
    """
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size != s.size:
        raise ValueError(f"scores and labels differ in size: {s.size} vs {y.size}")
    if y.all() or not y.any():
        return None
    from sklearn.metrics import precision_recall_curve  # scikit-learn costs 2 s to import

    precision, recall, thresholds = precision_recall_curve(y, s)
    denominator = precision[:-1] + recall[:-1]
    f1 = np.divide(
        2 * precision[:-1] * recall[:-1], denominator, out=np.zeros_like(denominator),
        where=denominator > 0,
    )  # fmt: skip
    best = int(np.argmax(f1))
    upper = float(thresholds[best])
    below = s[s < upper]
    lower = float(below.max()) if below.size else upper - 2 * _MARGIN
    return (upper + lower) / 2


def clamp_threshold(threshold: float) -> float:
    """A threshold inside (0, 1), as :func:`normalize_scores` needs."""
    return float(min(max(threshold, _MARGIN), 1.0 - _MARGIN))


def normalize_scores(values: ArrayOrTensor, threshold: float) -> ArrayOrTensor:
    """Monotone piecewise-linear map of [0, 1] with ``threshold`` → 0.5 (values clipped to
    [0, 1] first): [0, t] → [0, 0.5], [t, 1] → [0.5, 1]. Works on numpy arrays and tensors."""
    t = clamp_threshold(threshold)
    level = CALIBRATED_LEVEL
    if isinstance(values, Tensor):
        x = values.clamp(0.0, 1.0)
        return torch.where(x <= t, x * (level / t), level + (x - t) * ((1 - level) / (1 - t)))
    x = np.clip(values, 0.0, 1.0)
    out = np.where(x <= t, x * (level / t), level + (x - t) * ((1 - level) / (1 - t)))
    return out.astype(np.asarray(values).dtype, copy=False)


def calibrate_map(maps: Tensor, thresholds: Thresholds | None) -> Tensor:
    """Coarse maps with the head's pixel threshold at 0.5; unchanged without one."""
    if thresholds is None or thresholds.pixel is None:
        return maps
    return normalize_scores(maps, thresholds.pixel)


def calibrate_score(score: float, thresholds: Thresholds | None) -> float:
    """An image score with the head's image threshold at 0.5; unchanged without one."""
    if thresholds is None or thresholds.image is None:
        return score
    return float(normalize_scores(np.asarray([score], dtype=np.float64), thresholds.image)[0])


#: The training-free head's thresholds, calibrated once per shipped backbone on the miniature
#: world's training categories (``python -m training.miniature.thresholds``), keyed by backbone
#: id; each entry names the weights file it was calibrated on and that file's sha256.
ZERO_SHOT_THRESHOLDS_FILE = Path(__file__).parent / "model_weights" / "zero_shot_thresholds.json"


def zero_shot_thresholds(backbone_id: str, table: Path | None = None) -> Thresholds | None:
    """The thresholds shipped for the training-free head on ``backbone_id``, else None.

    An entry whose weights file is missing or has changed since (a retrained backbone under the
    same id) is ignored with a warning: its thresholds were chosen for other features.
    """
    table = table or ZERO_SHOT_THRESHOLDS_FILE
    try:
        entries = json.loads(table.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); training-free head uncalibrated", table, exc)
        return None
    entry = entries.get(backbone_id) if isinstance(entries, dict) else None
    if not isinstance(entry, dict):
        return None
    weights = table.parent / str(entry.get("weights", ""))
    if not weights.is_file() or _file_sha256(weights) != entry.get("sha256"):
        logger.warning(
            "%s: the thresholds for %s were calibrated on other weights than %s; the "
            "training-free head runs uncalibrated", table, backbone_id, weights,
        )  # fmt: skip
        return None
    return Thresholds.from_dict(entry)


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
