"""The miniature world: designed categories, the split, the seven defect kinds, exact masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from clipsam.data import read_mvtec
from clipsam.data.defects import AREA_RANGE, DEFORMATION_THRESHOLD, DISCOLORATION_THRESHOLD
from clipsam.data.synthetic import ALL_DEFECT_TYPES, render_synthetic_image
from clipsam.data.world import (
    CATEGORIES,
    HELDOUT_CATEGORIES,
    TRAIN_CATEGORIES,
    WORLD_DEFECT_TYPES,
    WorldSample,
    make_world_dataset,
    render_sample,
)

SIZE = (96, 112)  # small and not square: fast, and a swapped (H, W) shows up
SOFT = {"discoloration": DISCOLORATION_THRESHOLD, "deformation": DEFORMATION_THRESHOLD}


def _stats(image: np.ndarray) -> np.ndarray:
    """Mean colour, colour spread and a high-frequency energy: a crude look signature."""
    pixels = image.reshape(-1, 3).astype(float)
    grey = image.astype(float).mean(axis=2)
    detail = np.abs(grey - ndimage.uniform_filter(grey, 5)).mean()
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0), [4 * detail]])


def test_split_is_fixed_disjoint_and_covers_the_catalogue() -> None:
    assert len(CATEGORIES) >= 16 and len(set(CATEGORIES)) == len(CATEGORIES)
    assert len(HELDOUT_CATEGORIES) >= 4
    assert not set(TRAIN_CATEGORIES) & set(HELDOUT_CATEGORIES)
    assert set(TRAIN_CATEGORIES) | set(HELDOUT_CATEGORIES) == set(CATEGORIES)
    assert len(TRAIN_CATEGORIES) >= 16
    assert set(WORLD_DEFECT_TYPES) <= set(ALL_DEFECT_TYPES)
    assert len(WORLD_DEFECT_TYPES) == 7


def test_every_category_has_its_own_look() -> None:
    signatures = {
        name: np.mean(
            [_stats(render_sample(name, np.random.default_rng(i), SIZE).image) for i in range(2)],
            axis=0,
        )
        for name in CATEGORIES
    }
    names = list(signatures)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            gap = np.abs(signatures[a] - signatures[b]).max()
            assert gap > 6, (a, b, gap)


def test_images_of_a_category_vary_but_keep_the_look() -> None:
    for name in CATEGORIES:
        first, second = (render_sample(name, np.random.default_rng(i), SIZE).image for i in (1, 2))
        assert not np.array_equal(first, second), name
        assert np.abs(_stats(first)[:3] - _stats(second)[:3]).max() < 40, name


@pytest.mark.parametrize("kind", WORLD_DEFECT_TYPES)
def test_defect_masks_are_exact_visible_and_on_the_part(kind: str) -> None:
    low, high = AREA_RANGE
    for index, name in enumerate(CATEGORIES):
        rng_args = [index, 5]
        clean = render_sample(name, np.random.default_rng(rng_args), SIZE)
        sample = render_sample(name, np.random.default_rng(rng_args), SIZE, (kind,))
        assert isinstance(sample, WorldSample) and sample.category == name
        assert sample.image.dtype == np.uint8 and sample.image.shape == (*SIZE, 3)
        assert sample.mask.dtype == bool and sample.mask.shape == SIZE
        assert np.array_equal(sample.part_mask, clean.part_mask)
        assert not clean.mask.any() and clean.defects == ()
        [(painted, own)] = sample.defects
        assert painted == kind and own.any() and np.array_equal(own, sample.mask)
        assert not (sample.mask & ~sample.part_mask).any(), (name, kind)
        assert low <= sample.mask.mean() <= high, (name, kind, sample.mask.mean())
        diff = np.abs(sample.image.astype(int) - clean.image.astype(int)).mean(axis=2)
        # Exact: nothing changes outside the mask (soft defects: only below their threshold).
        assert diff[~sample.mask].max() <= SOFT.get(kind, 0.0) * 255 + 1, (name, kind)
        assert diff[sample.mask].mean() > 25, (name, kind, diff[sample.mask].mean())
        if kind == "missing_piece" and not sample.part_mask.all():
            # a bite out of the outline: it touches the part's edge
            edge = sample.part_mask & ~ndimage.binary_erosion(sample.part_mask, iterations=2)
            assert (sample.mask & edge).any(), name


def test_several_defects_each_get_a_mask() -> None:
    sample = render_sample(
        "washer", np.random.default_rng(3), (128, 128), ("scratch", "missing_piece", "spot")
    )
    assert [kind for kind, _ in sample.defects] == ["scratch", "missing_piece", "spot"]
    union = np.zeros_like(sample.mask)
    for _, mask in sample.defects:
        assert mask.any()
        union |= mask
    assert np.array_equal(union, sample.mask)


def test_full_frame_textures_fill_the_image() -> None:
    for name in ("woven fabric", "wood plank", "carpet"):
        assert render_sample(name, np.random.default_rng(0), SIZE).part_mask.all()
    for name in ("washer", "hex nut", "capsule"):
        part = render_sample(name, np.random.default_rng(0), SIZE).part_mask
        assert 0.1 < part.mean() < 0.8, name
    hole = render_sample("washer", np.random.default_rng(0), (128, 128)).part_mask
    assert not hole[64 - 3 : 64 + 3, 64 - 3 : 64 + 3].any()  # a washer has a hole


def test_render_is_deterministic_and_the_wrapper_draws_the_same() -> None:
    for name in ("hex nut", "carpet", "widget"):
        a = render_sample(name, np.random.default_rng(7), SIZE, ("crack", "deformation"))
        b = render_sample(name, np.random.default_rng(7), SIZE, ("crack", "deformation"))
        image, mask = render_synthetic_image(
            name, np.random.default_rng(7), SIZE, ("crack", "deformation")
        )
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.image, image) and np.array_equal(a.mask, mask)


def test_style_seed_varies_a_designed_look_a_little() -> None:
    a = render_sample("ceramic tile", np.random.default_rng(0), SIZE, style_seed=0).image
    b = render_sample("ceramic tile", np.random.default_rng(0), SIZE, style_seed=4).image
    assert not np.array_equal(a, b)
    assert np.abs(_stats(a)[:3] - _stats(b)[:3]).max() < 40


def test_unknown_names_still_render_with_new_defects() -> None:
    for kind in WORLD_DEFECT_TYPES:
        sample = render_sample("screw", np.random.default_rng(1), SIZE, (kind,))
        assert sample.mask.any() and not (sample.mask & ~sample.part_mask).any(), kind
    with pytest.raises(ValueError, match="missing_piece"):
        render_sample("screw", np.random.default_rng(1), SIZE, ("dent",))


def test_world_dataset_has_every_defect_type_and_is_deterministic(tmp_path: Path) -> None:
    def make(folder: str) -> dict[str, bytes]:
        root = make_world_dataset(
            tmp_path / folder, ("pcb board", "tablet"), 1, 7, seed=2, size=(64, 64), n_train_good=1
        )
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    first = make("a")
    assert first == make("b")
    samples = read_mvtec(tmp_path / "a", "test")
    assert {s.defect_type for s in samples} == {"good", *WORLD_DEFECT_TYPES}
    assert {s.category for s in samples} == {"pcb board", "tablet"}
    assert len(read_mvtec(tmp_path / "a", "train")) == 2
