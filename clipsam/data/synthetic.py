"""Synthetic factory-defect images, so tests, demos and CI never need the real datasets.

This module is the public face and the dataset writer; the looks live in
:mod:`clipsam.data.styles`, the defect painters in :mod:`clipsam.data.defects` and the miniature
world's catalogue of designed categories in :mod:`clipsam.data.world`. A category is a textured
"product" on a background: the world's named categories ("hex nut", "woven fabric", ...) have
designed looks, any other name gets a look derived from its hash (brushed metal, fabric, speckled
cast, wood-like rings). Defects are painted only on the product, and the mask marks exactly the
pixels that changed, so a segmentation model's score against it is meaningful. Everything is
driven by numpy ``Generator`` objects: the same call writes byte-identical files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clipsam.data.defects import (
    ALL_DEFECT_TYPES,
    AREA_RANGE,
    DEFORMATION_THRESHOLD,
    DISCOLORATION_THRESHOLD,
)
from clipsam.data.styles import SHAPES, TEXTURES, check_size, name_key
from clipsam.data.world import render_sample

logger = logging.getLogger(__name__)

#: The original defect kinds, in the round-robin order :func:`make_synthetic_dataset` assigns
#: them by default. :data:`ALL_DEFECT_TYPES` adds contamination, missing_piece and deformation.
DEFECT_TYPES = ("scratch", "spot", "crack", "discoloration")

__all__ = [
    "ALL_DEFECT_TYPES",
    "AREA_RANGE",
    "DEFECT_TYPES",
    "DEFORMATION_THRESHOLD",
    "DISCOLORATION_THRESHOLD",
    "SHAPES",
    "TEXTURES",
    "make_synthetic_dataset",
    "render_synthetic_image",
]


def render_synthetic_image(
    category: str,
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 128),
    defect_types: Sequence[str] = (),
    *,
    style_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one product image of ``category`` and return ``(image, mask)``.

    ``size`` is ``(height, width)``. One defect is drawn per entry of ``defect_types`` (repeat a
    name for several; any of :data:`ALL_DEFECT_TYPES`); an empty sequence gives a good image and
    an all-False mask. The look of the category depends on ``category`` and ``style_seed``;
    ``rng`` drives what varies between images. The defect-free pixels are drawn before any
    defect, so the same ``rng`` state with and without defects gives images that differ only
    where the mask (or, for discolorations and deformations, its sub-threshold soft edge) says.
    :func:`clipsam.data.world.render_sample` is the same drawing with the part and per-defect
    masks as well.
    """
    sample = render_sample(category, rng, size, defect_types, style_seed=style_seed)
    return sample.image, sample.mask


def make_synthetic_dataset(
    root: str | Path,
    categories: Iterable[str] = ("widget",),
    n_good: int = 10,
    n_defect: int = 10,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    n_train_good: int = 5,
    defect_types: Sequence[str] = DEFECT_TYPES,
) -> Path:
    """Write a small MVTec-AD-layout dataset under ``root`` and return ``root``.

    Per category: ``train/good/`` (``n_train_good``), ``test/good/`` (``n_good``) and
    ``n_defect`` defect images spread round-robin over ``defect_types`` (default: the original
    four, :data:`DEFECT_TYPES`; :data:`ALL_DEFECT_TYPES` has every kind) in ``test/<defect>/``
    with 0/255 masks in ``ground_truth/<defect>/<stem>_mask.png``. Each defect image holds one or
    two defects of its kind.
    Existing files of the same names are overwritten; use an empty folder.
    """
    names = [categories] if isinstance(categories, str) else list(categories)
    if not names:
        raise ValueError("categories must name at least one category, got none")
    for name in names:
        if not name or name in (".", "..") or any(c in name for c in "/\\:"):
            raise ValueError(f"category names become folder names; got unusable name {name!r}")
    for label, count in (
        ("n_good", n_good),
        ("n_defect", n_defect),
        ("n_train_good", n_train_good),
    ):
        if count < 0:
            raise ValueError(f"{label} must be >= 0, got {count}")
    kinds = tuple(defect_types)
    if not kinds:
        raise ValueError("defect_types must name at least one defect type, got none")
    for kind in kinds:
        if kind not in ALL_DEFECT_TYPES:
            raise ValueError(f"unknown defect type {kind!r}: expected one of {ALL_DEFECT_TYPES}")
    height, width = check_size(size)
    root = Path(root)

    for name in names:
        key = name_key(name)
        cat_dir = root / name
        for split_code, folder, count in ((0, "train", n_train_good), (1, "test", n_good)):
            out = cat_dir / folder / "good"
            out.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                rng = np.random.default_rng([seed, key, split_code, index])
                image, _ = render_synthetic_image(name, rng, (height, width), style_seed=seed)
                _save_png(image, out / f"{_stem(index, count)}.png")

        per_type = [len(range(i, n_defect, len(kinds))) for i in range(len(kinds))]
        for index in range(n_defect):
            kind = kinds[index % len(kinds)]
            stem = _stem(index // len(kinds), per_type[index % len(kinds)])
            rng = np.random.default_rng([seed, key, 2, index])
            n_defects = int(rng.integers(1, 3))
            image, mask = render_synthetic_image(
                name, rng, (height, width), (kind,) * n_defects, style_seed=seed
            )
            image_dir = cat_dir / "test" / kind
            mask_dir = cat_dir / "ground_truth" / kind
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            _save_png(image, image_dir / f"{stem}.png")
            _save_png(mask.astype(np.uint8) * 255, mask_dir / f"{stem}_mask.png")
    logger.info(
        "wrote synthetic dataset to %s: %d categories, %d train / %d good / %d defect images each",
        root,
        len(names),
        n_train_good,
        n_good,
        n_defect,
    )
    return root


# --------------------------------------------------------------------------- misc


def _stem(index: int, count: int) -> str:
    return f"{index:0{max(3, len(str(max(count - 1, 0))))}d}"


def _save_png(array: np.ndarray, path: Path) -> None:
    # Noisy images compress poorly; level 1 halves the write time for files a few % larger.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)
