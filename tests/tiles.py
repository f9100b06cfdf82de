"""A family of parts that ``clipsam.data`` did not make: flat glazed tiles with blended defects.

Written for the loop tests independently of the project's generators (numpy only, none of
``clipsam.data``'s code): square tiles in a grout grid, each glazed in one colour with a smooth
gradient and faint mottling; defects are soft-edged spots of another colour blended into the
glaze, and thin scratches a little lighter or darker than it. Masks mark where a defect
visibly changes the tile (blend weight ≥ 0.5 for spots, the stroke for scratches).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

CATEGORY = "enamel panel"  # not a word of the miniature world (which has "ceramic tile")

_GLAZES = np.array(
    [[0.86, 0.84, 0.78], [0.62, 0.74, 0.80], [0.80, 0.66, 0.55], [0.55, 0.66, 0.52],
     [0.90, 0.90, 0.92], [0.70, 0.62, 0.74]],
    dtype=np.float32,
)  # fmt: skip


@dataclass(frozen=True)
class Tile:
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray  # bool (H, W)


def render_tile(rng: np.random.Generator, size: int = 224, defects: int = 0) -> Tile:
    """One tile image with ``defects`` blended spots or scratches (their union is the mask)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    glaze = _GLAZES[rng.integers(len(_GLAZES))] * rng.uniform(0.92, 1.05)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    image = glaze[None, None] * (1.0 + rng.uniform(0.04, 0.10) * (ramp - 0.5))
    image = image + _mottle(rng, size, 0.012)[..., None]
    pitch = size / rng.choice([2, 3, 4])  # tiles per side
    offset = rng.uniform(0, pitch)
    grout = (np.minimum((xx * size + offset) % pitch, (yy * size + offset) % pitch)) < 2.0
    image[grout] = glaze * 0.55
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(defects):
        if rng.random() < 0.5:
            image, region = _spot(rng, image, yy, xx, size)
        else:
            image, region = _scratch(rng, image, yy, xx, size)
        mask |= region
    return Tile((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask)


def tiles(count: int, defect_rate: float, seed: int, size: int = 224) -> list[Tile]:
    """``count`` deterministic tiles; the first ``defect_rate`` of them carry 1–2 defects."""
    out = []
    for index in range(count):
        rng = np.random.default_rng([seed, 4242, index])
        defects = 0
        if index < round(defect_rate * count):
            defects = 1 + int(rng.random() < 0.3)
        out.append(render_tile(rng, size, defects))
    return out


def _mottle(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """Smooth low-frequency noise: a coarse random grid, bilinearly upsampled."""
    coarse = rng.normal(0, 1, (9, 9)).astype(np.float32)
    pos = np.linspace(0, 8, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(int), 7)
    f = pos - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    fine = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return amplitude * fine


def _spot(rng, image, yy, xx, size):  # type: ignore[no-untyped-def]
    """A soft-edged blob of another colour, blended in with a smooth falloff."""
    cy, cx = rng.uniform(0.15, 0.85, 2)
    radius = rng.uniform(0.05, 0.11)
    stretch = rng.uniform(0.7, 1.4)
    wobble = rng.uniform(0, 2 * np.pi)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.hypot((xx - cx) * stretch, (yy - cy) / stretch)
    edge = radius * (1 + 0.18 * np.sin(3 * theta + wobble))
    weight = np.clip(1.5 - r / edge, 0.0, 1.0) ** 1.5  # 1 inside, fading out past the edge
    strength = rng.uniform(0.75, 1.0)
    colour = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    if rng.random() < 0.5:  # a stain darker than the glaze
        colour = image[int(cy * size), int(cx * size)] * rng.uniform(0.35, 0.6)
    blend = (strength * weight)[..., None]
    return image * (1 - blend) + colour * blend, strength * weight >= 0.5


def _scratch(rng, image, yy, xx, size):  # type: ignore[no-untyped-def]
    """A thin, slightly curved stroke a little lighter or darker than the glaze."""
    p0 = rng.uniform(0.1, 0.9, 2)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.25, 0.55)
    bend = rng.uniform(-0.08, 0.08)
    t = np.linspace(0, 1, 64, dtype=np.float32)[:, None]
    direction = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
    normal = np.array([-direction[1], direction[0]], dtype=np.float32)
    points = p0 + t * length * direction + (4 * t * (1 - t)) * bend * normal  # (64, 2) in x, y
    points = np.clip(points, 0.02, 0.98)
    distance = np.full(xx.shape, np.inf, dtype=np.float32)
    for a, b in itertools.pairwise(points):
        distance = np.minimum(distance, _segment_distance(xx, yy, a, b) * size)
    width = rng.uniform(2.0, 3.5)
    weight = np.clip(width - distance + 0.5, 0.0, 1.0)  # anti-aliased stroke
    shade = rng.uniform(0.25, 0.45) * (1 if rng.random() < 0.5 else -1)
    return image + (shade * weight)[..., None], weight >= 0.5


def _segment_distance(xx, yy, a, b):  # type: ignore[no-untyped-def]
    ab = b - a
    t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12), 0, 1)
    return np.hypot(xx - (a[0] + t * ab[0]), yy - (a[1] + t * ab[1]))
