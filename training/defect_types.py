"""Teaching defect types: corrected regions → examples → a :class:`TypeClassifier`.

Each labelled region a person drew (each 8-connected piece of one label's mask) is one example,
described from the image's cached CLIP features exactly as a predicted region is at serving
time (:func:`clipsam.defect_types.describe_region`), so what is learnt applies as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from clipsam import Pipeline
from clipsam.defect_types import (
    RegionDescriptor,
    TypeClassifier,
    describe_region,
    fit_type_classifier,
)
from clipsam.images import image_hash

logger = logging.getLogger(__name__)

#: Pieces smaller than this fraction of the image are brush specks, not regions.
MIN_PIECE_FRACTION = 2e-4
#: A predicted region takes a corrected label when this share of it lies on that label.
MIN_OVERLAP = 0.3


@dataclass(frozen=True)
class TypeExample:
    region: RegionDescriptor
    label: str
    category: str | None = None  # the zero-shot prompts name it


def type_examples(
    pipeline: Pipeline,
    image: np.ndarray,
    label_masks: Mapping[str, npt.NDArray[np.bool_]],
    category: str | None = None,
) -> list[TypeExample]:
    """One example per connected piece of each label's mask, from the cached CLIP features."""
    if not label_masks:
        return []
    [features] = pipeline.clip_features([image], [image_hash(image)])
    examples = []
    for label, mask in label_masks.items():
        if mask.shape != image.shape[:2]:
            raise ValueError(f"label {label!r}: mask is {mask.shape}, image {image.shape[:2]}")
        pieces, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        for index in range(1, count + 1):
            piece = pieces == index
            if piece.mean() >= MIN_PIECE_FRACTION:
                region = describe_region(piece, features["vv"], pipeline.clip.grid)
                examples.append(TypeExample(region, label, category))
    return examples


def predicted_examples(
    pipeline: Pipeline,
    image: np.ndarray,
    label_masks: Mapping[str, npt.NDArray[np.bool_]],
    category: str | None = None,
) -> list[TypeExample]:
    """The regions the pipeline itself predicts on a corrected image, each labelled with the
    corrected label it mostly lies on (at least :data:`MIN_OVERLAP` of it).

    Predicted regions are blobbier than drawn ones; a classifier that learnt only from drawn
    regions types them poorly (``benchmarks/defect_types.py``), so it learns from both.
    """
    if not label_masks:
        return []
    [prediction] = pipeline.predict([image], category)
    [features] = pipeline.clip_features([image], [image_hash(image)])
    examples = []
    for region in prediction.regions:
        overlaps = {label: float((region.mask & m).sum()) for label, m in label_masks.items()}
        label = max(overlaps, key=lambda name: overlaps[name])
        if overlaps[label] >= MIN_OVERLAP * region.mask.sum():
            described = describe_region(region.mask, features["vv"], pipeline.clip.grid)
            examples.append(TypeExample(described, label, category))
    return examples


def fit_types(examples: Sequence[TypeExample]) -> TypeClassifier | None:
    """A classifier over every label with at least one example; None with fewer than two."""
    classifier = fit_type_classifier([e.region for e in examples], [e.label for e in examples])
    if classifier is not None:
        logger.info(
            "defect types learnt from %d region(s): %s",
            len(examples),
            dict(zip(classifier.labels, classifier.examples, strict=True)),
        )
    return classifier


def type_accuracy(
    pipeline: Pipeline, classifier: TypeClassifier | None, examples: Iterable[TypeExample],
    labels: Sequence[str],
) -> float | None:  # fmt: skip
    """The fraction of ``examples`` typed right among ``labels`` as the pipeline would type
    them with ``classifier`` (None: zero-shot, as before any correction); None without any."""
    hits = []
    for category, group in _by_category(examples).items():
        probs = pipeline.type_probs([e.region for e in group], labels, category, classifier)
        for row, example in zip(probs, group, strict=True):
            hits.append(labels[int(np.argmax(row))] == example.label)
    return float(np.mean(hits)) if hits else None


def _by_category(examples: Iterable[TypeExample]) -> dict[str | None, list[TypeExample]]:
    groups: dict[str | None, list[TypeExample]] = {}
    for example in examples:
        groups.setdefault(example.category, []).append(example)
    return groups
