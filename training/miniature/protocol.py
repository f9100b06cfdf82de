"""The paper's claims, measured in the miniature world (shared by the tests and the ablation).

Everything here runs on the shipped micro-CLIP and micro-SAM and on categories rendered from
``clipsam.data.world``: heads train on ``TRAIN_CATEGORIES`` and are judged on
``HELDOUT_CATEGORIES``, the cross-dataset protocol in miniature. Region scores are computed on
what a user sees: the prediction's binary mask at the original size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from clipsam.config import MMRConfig
from clipsam.heads import AnomalyHead
from clipsam.pipeline import Pipeline, fresh_head
from training.trainer import (
    TrainConfig,
    TrainingSample,
    evaluate_head,
    prepare_samples,
    train_head,
)


@dataclass(frozen=True)
class LabeledImage:
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # bool (H, W)
    category: str


def world_images(
    categories: Sequence[str],
    per_category: int,
    defect_rate: float,
    seed: int,
    size: int = 224,
) -> list[LabeledImage]:
    """Deterministic images of ``categories``; ``defect_rate`` of them carry 1–2 defects."""
    from clipsam.data.world import WORLD_DEFECT_TYPES, render_sample

    out = []
    for ci, category in enumerate(categories):
        for index in range(per_category):
            rng = np.random.default_rng([seed, 7919, ci, index])
            kinds: tuple[str, ...] = ()
            if index < round(defect_rate * per_category):
                count = 1 + int(rng.random() < 0.3)
                picks = rng.integers(len(WORLD_DEFECT_TYPES), size=count)
                kinds = tuple(WORLD_DEFECT_TYPES[int(k)] for k in picks)
            sample = render_sample(category, rng, (size, size), kinds)
            out.append(LabeledImage(sample.image, sample.mask, category))
    return out


def features(pipeline: Pipeline, data: Sequence[LabeledImage]) -> list[TrainingSample]:
    """Frozen CLIP features (cached by the pipeline) with masks at the CLIP input size."""
    items = ((d.image, d.mask, d.category) for d in data)
    return prepare_samples(pipeline, items, total=len(data), progress=False)


def pixel_auroc(pipeline: Pipeline, head: AnomalyHead, samples: Sequence[TrainingSample]) -> float:
    """Held-out pixel AUROC of the coarse map, per class then averaged (method spec §6)."""
    return float(evaluate_head(pipeline, head, samples)["mean"]["pixel_auroc"])


def train(
    pipeline: Pipeline,
    samples: Sequence[TrainingSample],
    kind: str = "umci",
    epochs: int = 6,
    seed: int = 0,
    **head_options: Any,
) -> AnomalyHead:
    """A head of ``kind`` trained on ``samples`` (no held-out slice: it is judged elsewhere)."""
    config = dataclasses.replace(
        pipeline.config,
        head=dataclasses.replace(pipeline.config.head, **{"head": kind, **head_options}),
    )
    init = fresh_head(config, pipeline.clip, seed)
    result = train_head(
        pipeline, samples, (), TrainConfig(epochs=epochs, seed=seed, progress=False), init
    )
    return result.head


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def region_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.2) -> tuple[int, int, int]:
    """(true positives, predicted regions, true regions): a region counts when its IoU with a
    region of the other side reaches ``iou`` (8-connected components on both sides)."""
    structure = np.ones((3, 3), dtype=bool)
    pred_labels, n_pred = ndimage.label(pred, structure)
    true_labels, n_true = ndimage.label(truth, structure)
    matched = 0
    for t in range(1, n_true + 1):
        region = true_labels == t
        for p in np.unique(pred_labels[region]):
            if p == 0:
                continue
            other = pred_labels == p
            if (region & other).sum() / (region | other).sum() >= iou:
                matched += 1
                break
    return matched, n_pred, n_true


@dataclass
class RegionScores:
    dice: float  # mean over defective images
    f1: float  # region F1 pooled over images
    empty: float  # fraction of defective images with no predicted region

    def row(self) -> dict[str, float]:
        return {"dice": self.dice, "region_f1": self.f1, "empty": self.empty}


def region_scores(predicted: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> RegionScores:
    dices = [dice(p, t) for p, t in zip(predicted, truths, strict=True)]
    counts = np.asarray(
        [region_f1(p, t) for p, t in zip(predicted, truths, strict=True)], dtype=float
    )
    tp, n_pred, n_true = counts.sum(0)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    empty = float(np.mean([not p.any() for p in predicted]))
    return RegionScores(float(np.mean(dices)), float(f1), empty)


def predicted_masks(
    pipeline: Pipeline,
    head: AnomalyHead,
    data: Sequence[LabeledImage],
    mmr: MMRConfig,
) -> list[np.ndarray]:
    """What the user sees: each image's predicted mask with ``head`` and MMR set to ``mmr``."""
    original_head, original_config = pipeline.head, pipeline.config
    pipeline.set_head(head)
    pipeline.config = dataclasses.replace(original_config, mmr=mmr)
    masks: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(data)
    try:
        for category in sorted({d.category for d in data}):
            indices = [i for i, d in enumerate(data) if d.category == category]
            predictions = pipeline.predict([data[i].image for i in indices], category)
            for i, prediction in zip(indices, predictions, strict=True):
                masks[i] = prediction.mask
    finally:
        pipeline.config = original_config
        pipeline.set_head(original_head)
    return masks
