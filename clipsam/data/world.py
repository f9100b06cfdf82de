"""The miniature world: a catalogue of designed product categories, a train / held-out split,
seven defect kinds and a per-image renderer that also returns the part and per-defect masks.

``docs/miniature_world.png`` (``scripts/world_figure.py``) shows every category. Categories in
:data:`HELDOUT_CATEGORIES` must stay out of every training objective: they are the zero-shot
test. Each of them shares kinds of texture and shape with training categories without copying
one ("bottle cap": a painted disc with a fluted edge, kin of "cast disc" and "washer";
"carpet": a fibrous full-frame textile, kin of "woven fabric" and "cork board";
"leather swatch": a pebbled rounded rectangle, kin of "brushed plate" and "cork board";
"tablet": a round white pill, kin of "capsule").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsam.data.defects import ALL_DEFECT_TYPES, paint_defects
from clipsam.data.styles import LOOKS, category_style, check_size, render_product, to_uint8

#: Every designed category, training and held-out.
CATEGORIES: tuple[str, ...] = tuple(LOOKS)
#: Kept out of all training, for zero-shot tests.
HELDOUT_CATEGORIES: tuple[str, ...] = ("bottle cap", "carpet", "leather swatch", "tablet")
TRAIN_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c not in HELDOUT_CATEGORIES)
#: The world's defect kinds (the order :func:`make_world_dataset` assigns them round-robin).
WORLD_DEFECT_TYPES: tuple[str, ...] = (
    "scratch",
    "crack",
    "spot",
    "contamination",
    "missing_piece",
    "discoloration",
    "deformation",
)


@dataclass(frozen=True, eq=False)
class WorldSample:
    """One rendered image with everything known about it.

    ``part_mask`` is the intact product's footprint (the whole frame for full-frame textures);
    every defect mask lies inside it, a ``missing_piece`` included (its pixels now show the
    background). ``defects`` holds ``(kind, mask)`` per painted defect, each non-empty; ``mask``
    is their union.
    """

    image: np.ndarray  # uint8 H×W×3
    mask: np.ndarray  # bool H×W
    part_mask: np.ndarray  # bool H×W
    defects: tuple[tuple[str, np.ndarray], ...]
    category: str


def render_sample(
    category: str,
    rng: np.random.Generator,
    size: tuple[int, int] = (224, 224),
    defect_types: Sequence[str] = (),
    style_seed: int = 0,
) -> WorldSample:
    """Draw one image of ``category`` with one defect per entry of ``defect_types``.

    Any category name works: the names in :data:`CATEGORIES` have designed looks, any other
    name gets a look derived from its hash. ``rng`` drives what varies between images (position,
    rotation, scale, light, texture detail, defects); the defect-free pixels are drawn before any
    defect, so the same ``rng`` state with and without defects gives images that differ only
    inside the mask (soft defects: by less than their threshold outside it).
    """
    height, width = check_size(size)
    for kind in defect_types:
        if kind not in ALL_DEFECT_TYPES:
            raise ValueError(f"unknown defect type {kind!r}: expected one of {ALL_DEFECT_TYPES}")
    style = category_style(category, int(style_seed))
    product = render_product(style, rng, (height, width))
    part = product.geometry.inside(0.0)
    if defect_types:
        image, mask, defects = paint_defects(product, style, rng, defect_types)
    else:
        image, mask, defects = product.image, np.zeros((height, width), dtype=bool), ()
    return WorldSample(to_uint8(image), mask, part, defects, category)


def make_world_dataset(
    root: str | Path,
    categories: Iterable[str] = CATEGORIES,
    n_good: int = 10,
    n_defect: int = 14,
    seed: int = 0,
    size: tuple[int, int] = (224, 224),
    n_train_good: int = 5,
) -> Path:
    """:func:`~clipsam.data.synthetic.make_synthetic_dataset` over :data:`WORLD_DEFECT_TYPES`:
    an MVTec-AD-layout dataset (``train/good``, ``test/<defect>``, ``ground_truth/<defect>``)."""
    from clipsam.data.synthetic import make_synthetic_dataset  # it imports this module

    return make_synthetic_dataset(
        root,
        categories,
        n_good=n_good,
        n_defect=n_defect,
        seed=seed,
        size=size,
        n_train_good=n_train_good,
        defect_types=WORLD_DEFECT_TYPES,
    )
