"""Labelled images for training and evaluation, read lazily from any supported layout."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from clipsam.data import Sample, load_mask, open_dataset
from clipsam.images import load_image


def load_samples(specs: Sequence[str], split: str = "test", categories=None) -> list[Sample]:
    """All samples of one or more ``scheme:PATH`` datasets (mvtec, visa, meta, folder)."""
    samples: list[Sample] = []
    for spec in specs:
        samples += open_dataset(spec, split=split, categories=categories)
    unlabeled = [s for s in samples if s.label < 0]
    if unlabeled:
        raise ValueError(
            f"{len(unlabeled)} samples have no labels (e.g. {unlabeled[0].image_path}); "
            "training and evaluation need mvtec:, visa: or meta: datasets with masks"
        )
    return samples


def iter_labeled(samples: Sequence[Sample]) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    """``(image, mask, category)`` per sample, read one at a time."""
    for sample in samples:
        image = load_image(sample.image_path)
        yield image, load_mask(sample, image.shape[:2]), sample.category
