"""Defect painters: each paints one defect on a rendered product and returns what it changed.

A painter takes ``(image, product, style, rng)``, paints into the float image in place and
returns the bool mask of the pixels it changed visibly; :func:`paint_defects` keeps them on the
product and redraws until the defects' total area lies in :data:`AREA_RANGE`.

* ``scratch``, ``spot``, ``crack``, ``contamination``: opaque paint; exactly the painted pixels
  change.
* ``missing_piece``: a bite out of the product's edge (a hole for full-frame textures); the
  background shows through and the mask is the missing product pixels.
* ``discoloration`` and ``deformation``: soft changes (a blended stain; a warp of the product's
  outline or surface with a little shading). The mask is where the mean channel change exceeds
  :data:`DISCOLORATION_THRESHOLD` / :data:`DEFORMATION_THRESHOLD`; outside it pixels may move by
  less than that, never more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from clipsam.data.styles import Geometry, Product, Style

logger = logging.getLogger(__name__)

#: Defects per image cover this fraction of the image (rejection-sampled into the range).
AREA_RANGE = (0.005, 0.06)
#: A discoloration pixel is in the mask when its mean channel change exceeds this (0-1 scale).
DISCOLORATION_THRESHOLD = 0.1
#: The same for a deformation.
DEFORMATION_THRESHOLD = 0.1

_MAX_ATTEMPTS = 40

Painter = Callable[[np.ndarray, Product, Style, np.random.Generator], np.ndarray]


def paint_defects(
    product: Product,
    style: Style,
    rng: np.random.Generator,
    defect_types: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, tuple[tuple[str, np.ndarray], ...]]:
    """Paint the defects, redrawing them until their area lies in :data:`AREA_RANGE`.

    Returns the image, the union mask and ``(kind, mask)`` per defect (the pixels that defect
    changed when it was painted; a later defect may paint over them).
    """
    clean = product.image
    height, width = clean.shape[:2]
    part = product.geometry.inside(0.0)
    low, high = AREA_RANGE
    image, mask = clean, np.zeros((height, width), dtype=bool)
    found: list[tuple[str, np.ndarray]] = []
    for _attempt in range(_MAX_ATTEMPTS):
        image = clean.copy()
        mask = np.zeros((height, width), dtype=bool)
        found = []
        for kind in defect_types:
            changed = PAINTERS[kind](image, product, style, rng) & part
            mask |= changed
            found.append((kind, changed))
        fraction = mask.mean()
        if low <= fraction <= high and all(m.any() for _, m in found):
            break
    else:
        logger.debug(
            "defect area %.4f outside %s after %d tries", mask.mean(), AREA_RANGE, _MAX_ATTEMPTS
        )
    return image, mask, tuple(found)


def _scratch(
    image: np.ndarray,
    product: Product,
    style: Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """Thin straight-ish bright or dark lines, sometimes with a shorter parallel companion."""
    texture, geometry = product.texture, product.geometry
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
    product: Product,
    style: Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """A filled, slightly irregular, rotated ellipse."""
    texture, geometry = product.texture, product.geometry
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
    product: Product,
    style: Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """A dark random-walk polyline with one or two branches."""
    texture, geometry = product.texture, product.geometry
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
    product: Product,
    style: Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """A soft-edged stain; the mask is where the colour moved more than the threshold."""
    texture, geometry = product.texture, product.geometry
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


def _contamination(
    image: np.ndarray,
    product: Product,
    style: Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """Foreign matter lying on the product: a curly hair or fibre, or a cluster of grit."""
    geometry = product.geometry
    scale = min(geometry.size) / 128.0
    if rng.random() < 0.5:
        width = max(2, round(1.4 * scale))
        interior = geometry.inside(4.0 * scale + width)
        start = np.array(_random_point(interior, rng, geometry))
        hair = _walk(
            interior, rng, start, float(rng.uniform(0, 2 * np.pi)), 16, 34, 2.2 * scale, turn=0.45
        )
        drawn = _draw_lines(geometry.size, [hair], width)
    else:
        interior = geometry.inside(12.0 * scale)
        cy, cx = _random_point(interior, rng, geometry)
        height, width_ = geometry.size
        canvas = Image.new("L", (width_, height), 0)
        draw = ImageDraw.Draw(canvas)
        spread = float(rng.uniform(3.0, 6.0)) * scale
        for _ in range(int(rng.integers(5, 12))):
            py = cy + float(rng.normal(0.0, spread))
            px = cx + float(rng.normal(0.0, spread))
            ry, rx = rng.uniform(0.9, 2.6, 2) * scale
            draw.ellipse((px - rx, py - ry, px + rx, py + ry), fill=255)
        drawn = np.asarray(canvas) > 0
    drawn &= geometry.inside(0.0)
    count = int(drawn.sum())
    if count:
        tone = rng.normal(1.0, 0.06, (count, 1)).astype(np.float32)
        image[drawn] = np.asarray(style.contamination_colour, dtype=np.float32) * tone
    return drawn


def _missing_piece(
    image: np.ndarray,
    product: Product,
    style: Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """A chip bitten out of the product's edge (a torn hole in a full-frame texture)."""
    geometry = product.geometry
    scale = min(geometry.size) / 128.0
    radius = float(rng.uniform(5.0, 9.0)) * scale
    part = geometry.inside(0.0)
    if geometry.full_frame:
        cy, cx = _random_point(geometry.inside(radius * 1.4 + 3.0 * scale), rng, geometry)
    else:
        cy, cx = _edge_point(geometry, rng)
        ny, nx = _normal(geometry.sdf, cy, cx)
        depth = float(rng.uniform(0.0, 0.45)) * radius
        cy, cx = cy - ny * depth, cx - nx * depth  # centre a little inside the outline
    window, (yy, xx) = _window(geometry.size, cy, cx, 1.5 * radius + 2)
    theta = np.arctan2(yy - cy, xx - cx)
    phases = rng.uniform(0, 2 * np.pi, 3)
    jag = rng.normal(0.0, 0.05, 24)
    index = ((theta + np.pi) / (2 * np.pi) * 24).astype(np.int64) % 24
    outline = radius * (
        1.0
        + 0.22 * np.sin(2 * theta + phases[0])
        + 0.12 * np.sin(3 * theta + phases[1])
        + 0.06 * np.sin(5 * theta + phases[2])
        + jag[index]
    )
    bite = np.zeros(geometry.size, dtype=bool)
    bite[window] = np.hypot(yy - cy, xx - cx) <= outline
    bite &= part
    image[bite] = product.background[bite]
    return bite


def _deformation(
    image: np.ndarray,
    product: Product,
    style: Style,
    rng: np.random.Generator,
) -> np.ndarray:
    """A dent: the outline pushed in (background shows), or a dimple in a full-frame surface."""
    geometry = product.geometry
    scale = min(geometry.size) / 128.0
    sigma = float(rng.uniform(6.0, 9.0)) * scale
    part = geometry.inside(0.0)
    if geometry.full_frame:
        cy, cx = _random_point(geometry.inside(2.5 * sigma), rng, geometry)
    else:
        cy, cx = _edge_point(geometry, rng)
    window, (yy, xx) = _window(geometry.size, cy, cx, 3.0 * sigma)
    gy, gx = yy - cy, xx - cx
    g = np.exp(-(gy**2 + gx**2) / (2 * sigma**2))
    local = image[window]
    if geometry.full_frame:
        amp = float(rng.uniform(0.15, 0.3))  # pixels sample from farther out: a stretched dimple
        src_y, src_x = yy + amp * g * gy, xx + amp * g * gx
        light = float(rng.uniform(0, 2 * np.pi))
        side = (gy * np.sin(light) + gx * np.cos(light)) / sigma
        shading = 1.0 - 0.5 * g + 0.15 * g * side
        if float(np.mean(style.base)) < 0.35:  # dark surfaces: the crushed spot shows paler
            shading = 1.0 + 0.9 * g + 0.15 * g * side
    else:
        ny, nx = _normal(geometry.sdf, cy, cx)
        amp = float(rng.uniform(4.0, 7.0)) * scale
        src_y, src_x = yy + amp * g * ny, xx + amp * g * nx
        shading = 1.0 - 0.15 * g
    warped = np.stack(
        [
            ndimage.map_coordinates(image[..., c], [src_y, src_x], order=1, mode="nearest")
            for c in range(3)
        ],
        axis=-1,
    )
    warped = warped * shading[..., None]
    inside = part[window]
    delta = np.abs(warped - local).mean(axis=2)
    changed_local = (delta > DEFORMATION_THRESHOLD) & inside
    local[inside] = warped[inside]  # only the product moves; the background stays put
    changed = np.zeros(geometry.size, dtype=bool)
    changed[window] = changed_local
    return changed


def _edge_point(geometry: Geometry, rng: np.random.Generator) -> tuple[float, float]:
    """A random pixel on the product's outline (its outer or inner edge), off the image border."""
    sdf = geometry.sdf
    height, width = geometry.size
    edge = (sdf <= 0.0) & (sdf > -1.5)
    margin = max(2, min(height, width) // 16)
    edge[:margin] = edge[-margin:] = False
    edge[:, :margin] = edge[:, -margin:] = False
    ys, xs = np.nonzero(edge)
    if len(ys) == 0:
        return geometry.centre
    pick = int(rng.integers(len(ys)))
    return float(ys[pick]), float(xs[pick])


def _normal(sdf: np.ndarray, cy: float, cx: float) -> tuple[float, float]:
    """The outward unit normal of the outline near (cy, cx), from the distance field."""
    height, width = sdf.shape
    y, x = round(cy), round(cx)
    y0, y1 = max(y - 2, 0), min(y + 2, height - 1)
    x0, x1 = max(x - 2, 0), min(x + 2, width - 1)
    gy = float(sdf[y1, x] - sdf[y0, x])
    gx = float(sdf[y, x1] - sdf[y, x0])
    norm = float(np.hypot(gy, gx))
    if norm < 1e-6:
        return 1.0, 0.0
    return gy / norm, gx / norm


def _window(
    size: tuple[int, int], cy: float, cx: float, reach: float
) -> tuple[tuple[slice, slice], tuple[np.ndarray, np.ndarray]]:
    """The clipped box of ``reach`` around (cy, cx) and its pixel coordinates."""
    height, width = size
    y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)) + 1, height)
    x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)) + 1, width)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), (yy, xx)


#: Every painter, by defect name.
PAINTERS: dict[str, Painter] = {
    "scratch": _scratch,
    "spot": _spot,
    "crack": _crack,
    "discoloration": _discoloration,
    "contamination": _contamination,
    "missing_piece": _missing_piece,
    "deformation": _deformation,
}


#: Every defect kind a painter exists for.
ALL_DEFECT_TYPES = tuple(PAINTERS)


# --------------------------------------------------------------------------- drawing helpers


def _paint(
    image: np.ndarray,
    where: np.ndarray,
    colour: tuple[float, float, float],
    texture: np.ndarray,
    style: Style,
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
    turn: float = 0.25,
) -> list[np.ndarray]:
    """A jittery polyline from ``start`` that stops where it would leave ``interior``."""
    points = [np.asarray(start, dtype=np.float64)]
    for _ in range(int(rng.integers(min_steps, max_steps + 1))):
        heading += float(rng.normal(0.0, turn))
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
    interior: np.ndarray, rng: np.random.Generator, geometry: Geometry
) -> tuple[float, float]:
    ys, xs = np.nonzero(interior)
    if len(ys) == 0:  # defect too large for this product: fall back to its centre
        return geometry.centre
    pick = int(rng.integers(len(ys)))
    return float(ys[pick]), float(xs[pick])


def _inside(interior: np.ndarray, point: np.ndarray) -> bool:
    y, x = round(float(point[0])), round(float(point[1]))
    return 0 <= y < interior.shape[0] and 0 <= x < interior.shape[1] and bool(interior[y, x])
