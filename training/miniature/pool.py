"""A pool of miniature-world images rendered once, then sampled in category-balanced batches.

Rendering costs far more than a micro-model's step (method spec §11), so trainers render a
fixed pool up front (in worker processes, deterministically) and augment it with flips and
quarter turns, which keep masks exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class Batch:
    images: list[np.ndarray]
    masks: list[np.ndarray]
    categories: list[str]
    kinds: list[tuple[str, ...]]


@dataclass
class ImagePool:
    """Rendered images (uint8 S×S×3), their defect masks (bool S×S), categories, defect kinds."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    categories: list[str]
    kinds: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, rng: np.random.Generator, n_categories: int, per_category: int) -> Batch:
        """``per_category`` images of each of ``n_categories`` categories, half of them damaged
        where the pool allows: same-category negatives make the state learnable."""
        names = sorted(set(self.categories))
        chosen = rng.choice(len(names), size=min(n_categories, len(names)), replace=False)
        out = Batch([], [], [], [])
        for c in chosen:
            category = names[int(c)]
            good = [i for i, n in enumerate(self.categories) if n == category and not self.kinds[i]]
            bad = [i for i, n in enumerate(self.categories) if n == category and self.kinds[i]]
            for j in range(per_category):
                source = bad if (j % 2 == 1 and bad) or not good else good
                index = int(source[int(rng.integers(len(source)))])
                image, mask = augment(self.images[index], self.masks[index], rng)
                out.images.append(image)
                out.masks.append(mask)
                out.categories.append(category)
                out.kinds.append(self.kinds[index])
        return out


def augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random flip and quarter turn, applied alike to the image and its mask."""
    turns = int(rng.integers(4))
    image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _render_one(args: tuple[str, int, int, int, float, int]) -> tuple:
    from clipsam.data.world import WORLD_DEFECT_TYPES, render_sample

    category, index, category_index, size, defect_rate, seed = args
    rng = np.random.default_rng([seed, category_index, index])
    kinds: tuple[str, ...] = ()
    if rng.random() < defect_rate:
        count = 1 + int(rng.random() < 0.3)
        kinds = tuple(
            WORLD_DEFECT_TYPES[int(k)] for k in rng.integers(len(WORLD_DEFECT_TYPES), size=count)
        )
    sample = render_sample(category, rng, (size, size), kinds)
    kinds = tuple(kind for kind, _ in sample.defects)
    return sample.image, sample.mask, category, kinds


def render_pool(
    categories: Sequence[str],
    per_category: int,
    size: int,
    defect_rate: float,
    seed: int,
    workers: int | None = None,
) -> ImagePool:
    """Render ``per_category`` images of each category; the same arguments give the same pool."""
    jobs = [
        (category, index, ci, size, defect_rate, seed)
        for ci, category in enumerate(categories)
        for index in range(per_category)
    ]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 32:
        with ProcessPoolExecutor(workers) as executor:
            rows = list(executor.map(_render_one, jobs, chunksize=16))
    else:
        rows = [_render_one(job) for job in jobs]
    return ImagePool(
        images=[r[0] for r in rows],
        masks=[r[1] for r in rows],
        categories=[r[2] for r in rows],
        kinds=[r[3] for r in rows],
    )
