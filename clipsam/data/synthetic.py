"""Synthetic factory-defect images, so tests, demos and CI never need the real datasets.

Each category is a textured "product" (brushed metal, fabric, speckled cast, wood-like rings) on
a plain background, with a look derived from its name and a seed. Defects (scratches, spots,
cracks, discolorations) are painted only on the product, and the mask marks exactly the pixels
that changed, so a segmentation model's score against it is meaningful. Everything is driven by
numpy ``Generator`` objects: the same call writes byte-identical files.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Defect kinds, in the round-robin order :func:`make_synthetic_dataset` assigns them.
DEFECT_TYPES = ("scratch", "spot", "crack", "discoloration")
TEXTURES = ("brushed", "fabric", "speckle", "rings")
SHAPES = ("disc", "rounded_rect")

#: Defects per image cover this fraction of the image (rejection-sampled into the range).
AREA_RANGE = (0.005, 0.06)
#: A discoloration pixel is in the mask when its mean channel change exceeds this (0-1 scale).
DISCOLORATION_THRESHOLD = 0.1

_MIN_SIDE = 32
_MAX_ATTEMPTS = 40
_STAINS = np.array(
    [
        (0.62, 0.30, 0.10),  # rust
        (0.85, 0.74, 0.20),  # yellow oil
        (0.20, 0.30, 0.70),  # blue heat tint
        (0.30, 0.55, 0.25),  # green oxide
        (0.18, 0.12, 0.08),  # burn
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class _Style:
    """The fixed look of one category: what stays the same from image to image."""

    texture: str
    shape: str
    base: tuple[float, float, float]
    background: tuple[float, float, float]
    extent: tuple[float, float]  # half-size of the product, as fractions of (H, W)
    texture_amp: float
    period: float  # texture period in pixels at 128 px
    angle: float
    ring_offset: tuple[float, float]
    light: float
    light_angle: float
    noise: float
    scratch_colour: tuple[float, float, float]
    spot_colour: tuple[float, float, float]
    crack_colour: tuple[float, float, float]
    stain_colour: tuple[float, float, float]


@dataclass(frozen=True)
class _Geometry:
    """Where the product lies in one image, so defects can be kept on it."""

    shape: str
    centre: tuple[float, float]  # (y, x)
    half: tuple[float, float]  # (half-height, half-width)
    size: tuple[int, int]

    def inside(self, inset: float) -> np.ndarray:
        """Bool mask of the product shrunk by ``inset`` pixels (convex, like the product)."""
        height, width = self.size
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        cy, cx = self.centre
        hy, hx = self.half[0] - inset, self.half[1] - inset
        if hy <= 1 or hx <= 1:
            return np.zeros((height, width), dtype=bool)
        box = (cx - hx, cy - hy, cx + hx, cy + hy)
        if self.shape == "disc":
            draw.ellipse(box, fill=255)
        else:
            radius = max(1.0, 0.3 * min(self.half) - inset)
            draw.rounded_rectangle(box, radius=radius, fill=255)
        return np.asarray(canvas) > 0


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
    name for several); an empty sequence gives a good image and an all-False mask. The look of
    the category depends on ``category`` and ``style_seed``; ``rng`` drives what varies between
    images. The defect-free pixels are drawn before any defect, so the same ``rng`` state with
    and without defects gives images that differ only where the mask (or, for discolorations,
    its sub-threshold soft edge) says.
    """
    height, width = _check_size(size)
    for kind in defect_types:
        if kind not in DEFECT_TYPES:
            raise ValueError(f"unknown defect type {kind!r}: expected one of {DEFECT_TYPES}")
    style = _category_style(category, int(style_seed))
    image, texture, geometry = _render_product(style, rng, (height, width))
    mask = np.zeros((height, width), dtype=bool)
    if defect_types:
        image, mask = _add_defects(image, texture, geometry, style, rng, defect_types)
    return _to_uint8(image), mask


def make_synthetic_dataset(
    root: str | Path,
    categories: Iterable[str] = ("widget",),
    n_good: int = 10,
    n_defect: int = 10,
    seed: int = 0,
    size: tuple[int, int] = (128, 128),
    n_train_good: int = 5,
) -> Path:
    """Write a small MVTec-AD-layout dataset under ``root`` and return ``root``.

    Per category: ``train/good/`` (``n_train_good``), ``test/good/`` (``n_good``) and
    ``n_defect`` defect images spread round-robin over :data:`DEFECT_TYPES` in
    ``test/<defect>/`` with 0/255 masks in ``ground_truth/<defect>/<stem>_mask.png``.
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
    height, width = _check_size(size)
    root = Path(root)

    for name in names:
        key = _name_key(name)
        cat_dir = root / name
        for split_code, folder, count in ((0, "train", n_train_good), (1, "test", n_good)):
            out = cat_dir / folder / "good"
            out.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                rng = np.random.default_rng([seed, key, split_code, index])
                image, _ = render_synthetic_image(name, rng, (height, width), style_seed=seed)
                _save_png(image, out / f"{_stem(index, count)}.png")

        per_type = [len(range(i, n_defect, len(DEFECT_TYPES))) for i in range(len(DEFECT_TYPES))]
        for index in range(n_defect):
            kind = DEFECT_TYPES[index % len(DEFECT_TYPES)]
            stem = _stem(index // len(DEFECT_TYPES), per_type[index % len(DEFECT_TYPES)])
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


# --------------------------------------------------------------------------- style


def _name_key(name: str) -> int:
    """A stable 64-bit number for a name (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


@lru_cache(maxsize=256)
def _category_style(category: str, seed: int) -> _Style:
    rng = np.random.default_rng([seed, _name_key(category), 7])
    hue = float(rng.uniform())
    base = np.array(
        colorsys.hsv_to_rgb(hue, float(rng.uniform(0.12, 0.5)), float(rng.uniform(0.5, 0.8))),
        dtype=np.float32,
    )
    lum = _luminance(base)
    grey = float(rng.uniform(0.08, 0.18)) if lum > 0.5 else float(rng.uniform(0.8, 0.9))
    background = np.clip(grey + rng.normal(0.0, 0.02, 3), 0.0, 1.0)

    dark = lum > 0.45 or bool(rng.random() < 0.5)
    scratch = base * 0.3 if dark else base + (1.0 - base) * 0.75
    spot = base * 0.2 + np.array([0.05, 0.03, 0.0]) if lum > 0.45 else np.array([0.93, 0.91, 0.86])
    crack = base * 0.12
    # The stain is one of the two palette colours farthest from the product colour.
    distances = np.linalg.norm(_STAINS - base, axis=1)
    stain = _STAINS[np.argsort(distances)[-1 - int(rng.integers(0, 2))]]

    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if shape == "disc":
        radius = float(rng.uniform(0.36, 0.42))
        extent = (radius, radius)
    else:
        extent = (float(rng.uniform(0.3, 0.42)), float(rng.uniform(0.33, 0.42)))
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    period = {
        "brushed": rng.uniform(10.0, 20.0),
        "fabric": rng.uniform(4.0, 7.0),
        "speckle": rng.uniform(0.8, 1.6),
        "rings": rng.uniform(5.0, 9.0),
    }[texture]
    return _Style(
        texture=texture,
        shape=shape,
        base=_rgb(base),
        background=_rgb(background),
        extent=extent,
        texture_amp=float(rng.uniform(0.05, 0.1)),
        period=float(period),
        angle=float(rng.uniform(0.0, np.pi)),
        ring_offset=(float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-1.5, 1.5))),
        light=float(rng.uniform(0.1, 0.22)),
        light_angle=float(rng.uniform(0.0, 2 * np.pi)),
        noise=float(rng.uniform(0.008, 0.015)),
        scratch_colour=_rgb(scratch),
        spot_colour=_rgb(spot),
        crack_colour=_rgb(crack),
        stain_colour=_rgb(stain),
    )


# --------------------------------------------------------------------------- product


def _render_product(
    style: _Style, rng: np.random.Generator, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, _Geometry]:
    """The defect-free image (float 0-1, H×W×3), its texture field and the product geometry."""
    height, width = size
    scale = min(height, width) / 128.0
    shift = rng.integers(-3, 4, size=2) * scale
    centre = (height / 2.0 + float(shift[0]), width / 2.0 + float(shift[1]))
    half = (style.extent[0] * height, style.extent[1] * width)
    if style.shape == "disc":
        half = (min(half), min(half))
    geometry = _Geometry(style.shape, centre, half, size)
    product = geometry.inside(0.0)

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    angle = style.angle + float(rng.normal(0.0, 0.05))
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    texture = _texture(style, rng, u, v, dy, dx, scale)

    light_angle = style.light_angle + float(rng.normal(0.0, 0.2))
    ramp = (dx * np.cos(light_angle) + dy * np.sin(light_angle)) / float(np.hypot(height, width))
    brightness = 1.0 + float(rng.normal(0.0, 0.03))
    shade = (1.0 + style.texture_amp * texture) * (1.0 + style.light * ramp) * brightness

    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = (
        np.asarray(style.background, dtype=np.float32) * (1.0 + 0.5 * style.light * ramp)[..., None]
    )
    base = np.asarray(style.base, dtype=np.float32)
    image[product] = base * shade[product][:, None]
    rim = product & ~geometry.inside(2.0 * scale)
    image[rim] *= 0.82  # a darker edge reads as a solid part rather than a flat sticker
    grain = rng.standard_normal((height, width, 4), dtype=np.float32)
    image += style.noise * (grain[..., :1] + grain[..., 1:] / 3)
    return image, texture, geometry


def _texture(
    style: _Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    scale: float,
) -> np.ndarray:
    """A zero-mean texture field of roughly unit amplitude, moving with the product."""
    height, width = u.shape
    period = style.period * scale
    if style.texture == "brushed":
        length = int(np.hypot(height, width)) + 4
        profile = ndimage.gaussian_filter1d(rng.standard_normal(length), 0.8)
        profile /= profile.std() + 1e-6
        index = np.clip((v + length / 2).astype(np.int64), 0, length - 1)
        phase = rng.uniform(0, 2 * np.pi)
        field = 0.8 * profile[index] + 0.4 * np.sin(2 * np.pi * u / (3 * period) + phase)
    elif style.texture == "fabric":
        a = 2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)
        b = 2 * np.pi * v / period + rng.uniform(0, 2 * np.pi)
        field = np.sin(a) * np.sin(b) + 0.4 * (np.sin(a) + np.sin(b))
        field += 0.3 * rng.standard_normal((height, width))
    elif style.texture == "speckle":
        field = ndimage.gaussian_filter(rng.standard_normal((height, width)), period)
        field /= field.std() + 1e-6
        field = np.clip(field, -2.5, 2.5) / 1.5
    else:  # rings
        oy = (style.ring_offset[0] + rng.normal(0.0, 0.05)) * height / 2
        ox = (style.ring_offset[1] + rng.normal(0.0, 0.05)) * width / 2
        warp = ndimage.gaussian_filter(rng.standard_normal((height, width)), 6 * scale)
        warp /= warp.std() + 1e-6
        radius = np.hypot(dy - oy, dx - ox) + 1.5 * scale * warp
        field = np.sin(2 * np.pi * radius / period + rng.uniform(0, 2 * np.pi))
        field += 0.3 * rng.standard_normal((height, width))
    return np.asarray(field, dtype=np.float32)


# --------------------------------------------------------------------------- defects


def _add_defects(
    clean: np.ndarray,
    texture: np.ndarray,
    geometry: _Geometry,
    style: _Style,
    rng: np.random.Generator,
    defect_types: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the defects, redrawing them until their area lies in :data:`AREA_RANGE`."""
    height, width = clean.shape[:2]
    product = geometry.inside(0.0)
    low, high = AREA_RANGE
    image, mask = clean, np.zeros((height, width), dtype=bool)
    for _attempt in range(_MAX_ATTEMPTS):
        image = clean.copy()
        mask = np.zeros((height, width), dtype=bool)
        for kind in defect_types:
            changed = _DRAWERS[kind](image, texture, geometry, style, rng)
            mask |= changed & product
        fraction = mask.mean()
        if low <= fraction <= high:
            break
    else:
        logger.debug(
            "defect area %.4f outside %s after %d tries", mask.mean(), AREA_RANGE, _MAX_ATTEMPTS
        )
    return image, mask


def _scratch(
    image: np.ndarray,
    texture: np.ndarray,
    geometry: _Geometry,
    style: _Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """Thin straight-ish bright or dark lines, sometimes with a shorter parallel companion."""
    scale = min(geometry.size) / 128.0
    width = max(1, round(int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4])) * scale))
    interior = geometry.inside(5.0 * scale + width)
    length = float(rng.uniform(0.22, 0.45)) * min(geometry.size)
    p0, p1 = _segment(interior, rng, length)
    direction = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-6)
    normal = np.array([-direction[1], direction[0]])
    mid = (p0 + p1) / 2 + normal * float(rng.normal(0.0, 0.04 * length))
    strokes = [[p0, mid if _inside(interior, mid) else (p0 + p1) / 2, p1]]
    if rng.random() < 0.4:
        offset = normal * float(rng.uniform(3.0, 6.0)) * scale * float(rng.choice([-1, 1]))
        start, stop = sorted(rng.uniform(0.0, 1.0, 2))
        q0, q1 = p0 + (p1 - p0) * start + offset, p0 + (p1 - p0) * stop + offset
        if _inside(interior, q0) and _inside(interior, q1):
            strokes.append([q0, q1])
    drawn = _draw_lines(geometry.size, strokes, width) & geometry.inside(0.0)
    _paint(image, drawn, style.scratch_colour, texture, style, rng)
    return drawn


def _spot(
    image: np.ndarray,
    texture: np.ndarray,
    geometry: _Geometry,
    style: _Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """A filled, slightly irregular, rotated ellipse."""
    scale = min(geometry.size) / 128.0
    ry, rx = rng.uniform(3.5, 8.5, 2) * scale
    interior = geometry.inside(5.0 * scale + max(ry, rx) * 1.2)
    cy, cx = _random_point(interior, rng, geometry)
    height, width = geometry.size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = float(rng.uniform(0, np.pi))
    dy, dx = yy - cy, xx - cx
    a = dx * np.cos(theta) + dy * np.sin(theta)
    b = -dx * np.sin(theta) + dy * np.cos(theta)
    polar = np.arctan2(b, a)
    wobble = 1.0 + 0.12 * np.sin(3 * polar + rng.uniform(0, 2 * np.pi))
    drawn = ((a / rx) ** 2 + (b / ry) ** 2 <= wobble**2) & geometry.inside(0.0)
    _paint(image, drawn, style.spot_colour, texture, style, rng)
    return drawn


def _crack(
    image: np.ndarray,
    texture: np.ndarray,
    geometry: _Geometry,
    style: _Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """A dark random-walk polyline with one or two branches."""
    scale = min(geometry.size) / 128.0
    width = max(2, round(int(rng.integers(2, 4)) * scale))
    interior = geometry.inside(5.0 * scale + width)
    step = 2.5 * scale
    main: list[np.ndarray] = []
    for _ in range(10):  # retry starts that run into the edge at once
        start = np.array(_random_point(interior, rng, geometry))
        main = _walk(interior, rng, start, float(rng.uniform(0, 2 * np.pi)), 14, 28, step)
        if len(main) >= 8:
            break
    strokes = [main]
    for _ in range(int(rng.integers(1, 3))):
        if len(main) < 4:
            break
        at = int(rng.integers(1, len(main) - 2))
        delta = main[at + 1] - main[at]
        heading = float(np.arctan2(delta[0], delta[1]))
        heading += float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.1))
        branch = _walk(interior, rng, main[at], heading, 4, 10, step)
        if len(branch) >= 2:
            strokes.append(branch)
    drawn = _draw_lines(geometry.size, strokes[:1], width)
    if len(strokes) > 1:
        drawn |= _draw_lines(geometry.size, strokes[1:], max(2, width - 1))
    drawn &= geometry.inside(0.0)
    _paint(image, drawn, style.crack_colour, texture, style, rng)
    return drawn


def _discoloration(
    image: np.ndarray,
    texture: np.ndarray,
    geometry: _Geometry,
    style: _Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """A soft-edged stain; the mask is where the colour moved more than the threshold."""
    scale = min(geometry.size) / 128.0
    height, width = geometry.size
    ry, rx = rng.uniform(6.0, 13.0, 2) * scale
    interior = geometry.inside(4.0 * scale + max(ry, rx))
    cy, cx = _random_point(interior, rng, geometry)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    field = (
        blob.astype(np.float32)
        + 0.35 * rng.standard_normal((height, width)).astype(np.float32) * blob
    )
    alpha = ndimage.gaussian_filter(field, 2.5 * scale)
    alpha = np.clip(alpha * float(rng.uniform(0.9, 1.0)), 0.0, 1.0) * geometry.inside(0.0)
    stain = (
        np.asarray(style.stain_colour, dtype=np.float32)
        * (1.0 + 0.5 * style.texture_amp * texture)[..., None]
    )
    changed = image * (1.0 - alpha[..., None]) + stain * alpha[..., None]
    delta = np.abs(changed - image).mean(axis=2)
    image[:] = changed
    return delta > DISCOLORATION_THRESHOLD


_DRAWERS = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
    "discoloration": _discoloration,
}


# --------------------------------------------------------------------------- drawing helpers


def _paint(
    image: np.ndarray,
    where: np.ndarray,
    colour: tuple[float, float, float],
    texture: np.ndarray,
    style: _Style,
    rng: np.random.Generator,
) -> None:
    """Replace ``where`` by ``colour``, keeping a little texture and noise so it looks real."""
    count = int(where.sum())
    if count == 0:
        return
    shade = 1.0 + 0.5 * style.texture_amp * texture[where]
    noise = rng.normal(0.0, style.noise, (count, 1))
    image[where] = np.asarray(colour, dtype=np.float32) * shade[:, None] + noise


def _draw_lines(size: tuple[int, int], strokes: list[list[np.ndarray]], width: int) -> np.ndarray:
    height, w = size
    canvas = Image.new("L", (w, height), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        if len(stroke) < 2:
            continue
        points = [(float(p[1]), float(p[0])) for p in stroke]  # PIL wants (x, y)
        draw.line(points, fill=255, width=width, joint="curve")
    return np.asarray(canvas) > 0


def _walk(
    interior: np.ndarray,
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    min_steps: int,
    max_steps: int,
    step: float,
) -> list[np.ndarray]:
    """A jittery polyline from ``start`` that stops where it would leave ``interior``."""
    points = [np.asarray(start, dtype=np.float64)]
    for _ in range(int(rng.integers(min_steps, max_steps + 1))):
        heading += float(rng.normal(0.0, 0.25))
        nxt = points[-1] + step * np.array([np.sin(heading), np.cos(heading)])
        if not _inside(interior, nxt):
            break
        points.append(nxt)
    return points


def _segment(
    interior: np.ndarray, rng: np.random.Generator, length: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two interior points about ``length`` apart (shortened until the end fits)."""
    ys, xs = np.nonzero(interior)
    if len(ys) == 0:
        raise ValueError("image too small to place a defect on the product")
    pick = int(rng.integers(len(ys)))
    p0 = np.array([ys[pick], xs[pick]], dtype=np.float64)
    while True:
        for _ in range(8):
            theta = float(rng.uniform(0, 2 * np.pi))
            p1 = p0 + length * np.array([np.sin(theta), np.cos(theta)])
            if _inside(interior, p1):
                return p0, p1
        length *= 0.8
        if length < 4.0:
            return p0, p0 + np.array([0.0, 1.0])


def _random_point(
    interior: np.ndarray, rng: np.random.Generator, geometry: _Geometry
) -> tuple[float, float]:
    ys, xs = np.nonzero(interior)
    if len(ys) == 0:  # defect too large for this product: fall back to its centre
        return geometry.centre
    pick = int(rng.integers(len(ys)))
    return float(ys[pick]), float(xs[pick])


def _inside(interior: np.ndarray, point: np.ndarray) -> bool:
    y, x = round(float(point[0])), round(float(point[1]))
    return 0 <= y < interior.shape[0] and 0 <= x < interior.shape[1] and bool(interior[y, x])


# --------------------------------------------------------------------------- misc


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or min(int(size[0]), int(size[1])) < _MIN_SIDE:
        raise ValueError(f"size must be (height, width) with both >= {_MIN_SIDE}, got {size}")
    return int(size[0]), int(size[1])


def _luminance(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    clipped = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return float(clipped[0]), float(clipped[1]), float(clipped[2])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))


def _stem(index: int, count: int) -> str:
    return f"{index:0{max(3, len(str(max(count - 1, 0))))}d}"


def _save_png(array: np.ndarray, path: Path) -> None:
    # Noisy images compress poorly; level 1 halves the write time for files a few % larger.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)
