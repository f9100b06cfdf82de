"""How the synthetic products look: category styles and the defect-free product rendering.

Two kinds of look share one :class:`Style`:

* **designed looks** (:data:`LOOKS`): the miniature world's named categories ("hex nut",
  "woven fabric", "pcb board", ...), each drawn by hand-written texture, shape, colour,
  background and lighting rules (:func:`render_product` draws them through signed distance
  fields, so shapes rotate and scale freely);
* **derived looks** for any other name ("widget", "screw"): texture, shape and colours drawn
  from a hash of the name, exactly as the original generator did (byte for byte: the legacy
  path below keeps its order of random draws).

``style_seed`` varies a look: a derived look is re-drawn, a designed look keeps its design and
moves its colours and texture scale a little (seed 0 is the canonical design).
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

#: Textures and shapes of the derived (name-hash) looks.
TEXTURES = ("brushed", "fabric", "speckle", "rings")
SHAPES = ("disc", "rounded_rect")

MIN_SIDE = 32
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

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Style:
    """The fixed look of one category: what stays the same from image to image.

    ``look`` is the designed look's name, or ``""`` for a derived (name-hash) look, which only
    uses the fields up to ``stain_colour``.
    """

    texture: str
    shape: str
    base: Colour
    background: Colour
    extent: tuple[float, float]  # derived: half-size / (H, W); designed: see LOOKS
    texture_amp: float
    period: float  # texture period in pixels at 128 px (derived) or 224 px (designed)
    angle: float
    ring_offset: tuple[float, float]
    light: float
    light_angle: float
    noise: float
    scratch_colour: Colour
    spot_colour: Colour
    crack_colour: Colour
    stain_colour: Colour
    # ---- designed looks only
    look: str = ""
    accent: Colour = (0.0, 0.0, 0.0)
    hole: float = 0.0  # inner radius / outer size (ring, hexagon)
    contamination_colour: Colour = (0.1, 0.08, 0.06)
    background_texture: float = 0.0
    specular: float = 0.0
    shadow: float = 0.25
    rot_jitter: float = 0.0  # radians (std); pi for round things that may lie any way
    shift: float = 6.0  # px at 224 (std)
    scale_jitter: float = 0.03
    light_jitter: float = 0.3  # radians (std) of the light direction


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where the product lies in one image, so defects can be kept on it.

    ``sdf`` is a signed distance (pixels) to the product outline, negative inside. Designed
    looks test ``sdf`` directly; derived looks redraw the outline with PIL (as they always did)
    and get ``sdf`` from distance transforms, for the painters that need an outline normal.
    """

    shape: str
    centre: tuple[float, float]  # (y, x)
    half: tuple[float, float]  # (half-height, half-width)
    size: tuple[int, int]
    sdf: np.ndarray = field(repr=False)
    legacy: bool = False

    def inside(self, inset: float) -> np.ndarray:
        """Bool mask of the product shrunk by ``inset`` pixels.

        For designed looks a positive ``inset`` is capped at 60 % of the product's depth, so a
        thin product (a gasket) still has an interior to place defects in.
        """
        if not self.legacy:
            if inset > 0:
                inset = min(inset, 0.6 * float(-self.sdf.min()))
            return np.asarray(self.sdf <= -inset)
        return _legacy_inside(self.shape, self.centre, self.half, self.size, inset)

    @property
    def full_frame(self) -> bool:
        return self.shape == "frame"


@dataclass(frozen=True, eq=False)
class Product:
    """A defect-free rendering: the image, what lies behind the product, and its texture."""

    image: np.ndarray  # float32 H×W×3, 0-1
    background: np.ndarray  # float32 H×W×3: what shows through a hole in the product
    texture: np.ndarray  # float32 H×W, zero-mean texture field (defects keep a little of it)
    geometry: Geometry

    @property
    def part(self) -> np.ndarray:
        return self.geometry.inside(0.0)


def name_key(name: str) -> int:
    """A stable 64-bit number for a name (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def category_style(category: str, seed: int = 0) -> Style:
    """The look of ``category``: its designed look if it has one, else one derived from the name."""
    if category in LOOKS:
        return _designed_style(category, int(seed))
    return _derived_style(category, int(seed))


def render_product(style: Style, rng: np.random.Generator, size: tuple[int, int]) -> Product:
    """Draw the defect-free product of ``style`` at ``size`` = (H, W)."""
    if style.look:
        return _render_designed(style, rng, size)
    return _render_derived(style, rng, size)


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or min(int(size[0]), int(size[1])) < MIN_SIDE:
        raise ValueError(f"size must be (height, width) with both >= {MIN_SIDE}, got {size}")
    return int(size[0]), int(size[1])


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- derived looks


@lru_cache(maxsize=256)
def _derived_style(category: str, seed: int) -> Style:
    rng = np.random.default_rng([seed, name_key(category), 7])
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
    return Style(
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
        contamination_colour=_contamination_colour(base),
    )


def _legacy_inside(
    shape: str,
    centre: tuple[float, float],
    half: tuple[float, float],
    size: tuple[int, int],
    inset: float,
) -> np.ndarray:
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cy, cx = centre
    hy, hx = half[0] - inset, half[1] - inset
    if hy <= 1 or hx <= 1:
        return np.zeros((height, width), dtype=bool)
    box = (cx - hx, cy - hy, cx + hx, cy + hy)
    if shape == "disc":
        draw.ellipse(box, fill=255)
    else:
        radius = max(1.0, 0.3 * min(half) - inset)
        draw.rounded_rectangle(box, radius=radius, fill=255)
    return np.asarray(canvas) > 0


def _render_derived(style: Style, rng: np.random.Generator, size: tuple[int, int]) -> Product:
    height, width = size
    scale = min(height, width) / 128.0
    shift = rng.integers(-3, 4, size=2) * scale
    centre = (height / 2.0 + float(shift[0]), width / 2.0 + float(shift[1]))
    half = (style.extent[0] * height, style.extent[1] * width)
    if style.shape == "disc":
        half = (min(half), min(half))
    product = _legacy_inside(style.shape, centre, half, size, 0.0)
    sdf = ndimage.distance_transform_edt(~product) - ndimage.distance_transform_edt(product)
    geometry = Geometry(style.shape, centre, half, size, sdf.astype(np.float32), legacy=True)

    yy, xx = _grid(height, width)
    dy, dx = yy - centre[0], xx - centre[1]
    angle = style.angle + float(rng.normal(0.0, 0.05))
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    texture = _derived_texture(style, rng, u, v, dy, dx, scale)

    light_angle = style.light_angle + float(rng.normal(0.0, 0.2))
    ramp = (dx * np.cos(light_angle) + dy * np.sin(light_angle)) / float(np.hypot(height, width))
    brightness = 1.0 + float(rng.normal(0.0, 0.03))
    shade = (1.0 + style.texture_amp * texture) * (1.0 + style.light * ramp) * brightness

    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = (
        np.asarray(style.background, dtype=np.float32) * (1.0 + 0.5 * style.light * ramp)[..., None]
    )
    background = image.copy()
    base = np.asarray(style.base, dtype=np.float32)
    image[product] = base * shade[product][:, None]
    rim = product & ~geometry.inside(2.0 * scale)
    image[rim] *= 0.82  # a darker edge reads as a solid part rather than a flat sticker
    grain = rng.standard_normal((height, width, 4), dtype=np.float32)
    noise = style.noise * (grain[..., :1] + grain[..., 1:] / 3)
    image += noise
    background += noise
    return Product(image, background, texture, geometry)


def _derived_texture(
    style: Style,
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


# --------------------------------------------------------------------------- designed looks

#: The designed looks. ``extent``: disc/ring (radius, radius), hexagon (inradius, inradius),
#: rounded_rect (half-height, half-width), capsule (radius, half-length of the straight part),
#: all as fractions of the image's shorter side; frame: unused (the product fills the image).
LOOKS: dict[str, dict[str, Any]] = {
    "hex nut": dict(
        shape="hexagon",
        texture="turned",
        base=(0.76, 0.64, 0.34),
        background=(0.84, 0.85, 0.87),
        extent=(0.33, 0.33),
        hole=0.52,
        texture_amp=0.12,
        period=2.5,
        light=0.35,
        specular=0.3,
        rot_jitter=np.pi,
        background_texture=0.02,
    ),
    "washer": dict(
        shape="ring",
        texture="turned",
        base=(0.74, 0.76, 0.78),
        background=(0.30, 0.22, 0.16),
        extent=(0.38, 0.38),
        hole=0.42,
        texture_amp=0.1,
        period=1.8,
        light=0.3,
        specular=0.4,
        rot_jitter=np.pi,
        background_texture=0.06,
    ),
    "cast disc": dict(
        shape="disc",
        texture="cast",
        base=(0.42, 0.42, 0.44),
        background=(0.80, 0.76, 0.66),
        extent=(0.39, 0.39),
        texture_amp=0.22,
        period=1.2,
        light=0.3,
        rot_jitter=np.pi,
        background_texture=0.03,
    ),
    "rubber gasket": dict(
        shape="ring",
        texture="rubber",
        base=(0.16, 0.16, 0.17),
        background=(0.78, 0.80, 0.83),
        extent=(0.41, 0.41),
        hole=0.7,
        texture_amp=0.25,
        period=1.0,
        light=0.2,
        specular=0.12,
        rot_jitter=np.pi,
    ),
    "capsule": dict(
        shape="capsule",
        texture="capsule",
        base=(0.80, 0.16, 0.14),
        accent=(0.94, 0.92, 0.86),
        background=(0.16, 0.26, 0.36),
        extent=(0.17, 0.2),
        texture_amp=0.04,
        period=4.0,
        light=0.25,
        specular=0.45,
        rot_jitter=0.35,
        background_texture=0.03,
    ),
    "ceramic tile": dict(
        shape="rounded_rect",
        texture="glaze",
        base=(0.58, 0.78, 0.80),
        background=(0.52, 0.50, 0.47),
        extent=(0.43, 0.43),
        texture_amp=0.04,
        period=30.0,
        light=0.2,
        specular=0.25,
        rot_jitter=0.03,
        shift=3.0,
        background_texture=0.12,
        shadow=0.45,
    ),
    "brushed plate": dict(
        shape="rounded_rect",
        texture="brushed",
        base=(0.70, 0.72, 0.75),
        background=(0.10, 0.10, 0.11),
        extent=(0.31, 0.38),
        texture_amp=0.14,
        period=14.0,
        light=0.35,
        specular=0.2,
        rot_jitter=0.12,
    ),
    "wood plank": dict(
        shape="frame",
        texture="grain",
        base=(0.64, 0.44, 0.26),
        background=(0.12, 0.08, 0.05),
        texture_amp=0.3,
        period=9.0,
        light=0.2,
        rot_jitter=0.06,
    ),
    "pcb board": dict(
        shape="frame",
        texture="pcb",
        base=(0.12, 0.42, 0.20),
        accent=(0.80, 0.66, 0.30),
        background=(0.85, 0.83, 0.75),
        texture_amp=0.1,
        period=16.0,
        light=0.15,
    ),
    "woven fabric": dict(
        shape="frame",
        texture="weave",
        base=(0.20, 0.30, 0.58),
        accent=(0.80, 0.80, 0.76),
        background=(0.05, 0.05, 0.06),
        texture_amp=0.3,
        period=9.0,
        light=0.15,
        rot_jitter=0.08,
    ),
    "grid mesh": dict(
        shape="frame",
        texture="mesh",
        base=(0.78, 0.79, 0.80),
        accent=(0.10, 0.11, 0.13),
        background=(0.93, 0.50, 0.20),
        contamination=(0.62, 0.28, 0.10),
        texture_amp=0.2,
        period=16.0,
        light=0.25,
        rot_jitter=0.08,
    ),
    "marble slab": dict(
        shape="frame",
        texture="veins",
        base=(0.90, 0.89, 0.86),
        accent=(0.42, 0.43, 0.46),
        background=(0.20, 0.18, 0.16),
        texture_amp=0.05,
        period=80.0,
        light=0.12,
    ),
    "cable cross-section": dict(
        shape="disc",
        texture="cable",
        crack=(0.95, 0.95, 0.92),  # light: the cut face is black, grey and coloured
        base=(0.13, 0.13, 0.14),
        background=(0.86, 0.86, 0.84),
        extent=(0.4, 0.4),
        texture_amp=0.12,
        period=2.0,
        light=0.2,
        specular=0.1,
        rot_jitter=np.pi,
    ),
    "glass bottle top": dict(
        shape="disc",
        texture="glass",
        base=(0.25, 0.55, 0.32),
        background=(0.93, 0.92, 0.88),
        extent=(0.4, 0.4),
        texture_amp=0.05,
        period=3.0,
        light=0.2,
        specular=0.55,
        rot_jitter=np.pi,
    ),
    "solar cell": dict(
        shape="frame",
        texture="solar",
        base=(0.10, 0.16, 0.34),
        accent=(0.82, 0.83, 0.86),
        background=(0.95, 0.95, 0.95),
        texture_amp=0.3,
        period=12.0,
        light=0.2,
        rot_jitter=0.02,
    ),
    "cork board": dict(
        shape="frame",
        texture="cork",
        base=(0.70, 0.52, 0.32),
        background=(0.92, 0.92, 0.90),
        texture_amp=0.35,
        period=1.5,
        light=0.15,
    ),
    # ---- held-out looks (see clipsam.data.world): kin of the ones above, not copies
    "bottle cap": dict(
        shape="disc",
        texture="knurl",
        base=(0.78, 0.14, 0.12),
        background=(0.90, 0.90, 0.88),
        extent=(0.38, 0.38),
        texture_amp=0.25,
        period=5.0,
        light=0.3,
        specular=0.3,
        rot_jitter=np.pi,
    ),
    "carpet": dict(
        shape="frame",
        texture="fibre",
        base=(0.52, 0.16, 0.20),
        background=(0.90, 0.88, 0.80),
        texture_amp=0.4,
        period=6.0,
        light=0.15,
    ),
    "leather swatch": dict(
        shape="rounded_rect",
        texture="pebble",
        base=(0.52, 0.32, 0.18),
        background=(0.88, 0.86, 0.80),
        extent=(0.38, 0.34),
        texture_amp=0.3,
        period=1.6,
        light=0.25,
        specular=0.1,
        rot_jitter=0.2,
    ),
    "tablet": dict(
        shape="disc",
        texture="tablet",
        base=(0.94, 0.93, 0.90),
        background=(0.22, 0.30, 0.46),
        extent=(0.3, 0.3),
        texture_amp=0.04,
        period=1.0,
        light=0.3,
        specular=0.2,
        rot_jitter=np.pi,
        background_texture=0.03,
    ),
}


@lru_cache(maxsize=256)
def _designed_style(category: str, seed: int) -> Style:
    spec = dict(LOOKS[category])
    base = np.asarray(spec.pop("base"), dtype=np.float32)
    accent = np.asarray(spec.pop("accent", (0.0, 0.0, 0.0)), dtype=np.float32)
    background = np.asarray(spec.pop("background"), dtype=np.float32)
    period = float(spec.pop("period"))
    if seed:
        rng = np.random.default_rng([seed, name_key(category), 11])
        base = _shift_colour(base, rng)
        accent = _shift_colour(accent, rng)
        background = np.clip(background * float(rng.uniform(0.92, 1.08)), 0.0, 1.0)
        period *= float(rng.uniform(0.9, 1.1))
    lum = _luminance(base)
    if lum < 0.3:  # dark products: light scratches, pale spots, greyish cracks
        scratch = base + (1.0 - base) * 0.7
        spot = np.array([0.86, 0.84, 0.78])
        crack = np.array([0.62, 0.62, 0.60])
    else:
        scratch = base * 0.3
        spot = base * 0.2 + np.array([0.05, 0.03, 0.0])
        crack = base * 0.12
    stain = _STAINS[int(np.argmax(np.linalg.norm(_STAINS - base, axis=1)))]
    base_dirt = _contamination_colour(base)
    scratch = np.asarray(spec.pop("scratch", scratch))
    spot = np.asarray(spec.pop("spot", spot))
    crack = np.asarray(spec.pop("crack", crack))
    return Style(
        texture=str(spec.pop("texture")),
        shape=str(spec.pop("shape")),
        base=_rgb(base),
        background=_rgb(background),
        extent=tuple(spec.pop("extent", (0.5, 0.5))),
        texture_amp=float(spec.pop("texture_amp")),
        period=period,
        angle=0.0,
        ring_offset=(0.0, 0.0),
        light=float(spec.pop("light")),
        light_angle=float(np.random.default_rng([seed, name_key(category), 5]).uniform(0, 6.28)),
        noise=float(spec.pop("noise", 0.012)),
        scratch_colour=_rgb(scratch),
        spot_colour=_rgb(spot),
        crack_colour=_rgb(crack),
        stain_colour=_rgb(stain),
        look=category,
        accent=_rgb(accent),
        contamination_colour=_rgb(np.asarray(spec.pop("contamination", None) or base_dirt)),
        **spec,
    )


def _render_designed(style: Style, rng: np.random.Generator, size: tuple[int, int]) -> Product:
    height, width = size
    s = min(height, width) / 224.0
    shift = np.clip(
        rng.normal(0.0, style.shift * s, 2), -2.5 * style.shift * s, 2.5 * style.shift * s
    )
    centre = (height / 2.0 + float(shift[0]), width / 2.0 + float(shift[1]))
    angle = style.angle + float(rng.normal(0.0, style.rot_jitter)) if style.rot_jitter else 0.0
    zoom = 1.0 + float(np.clip(rng.normal(0.0, style.scale_jitter), -0.08, 0.08))
    light_angle = style.light_angle + float(rng.normal(0.0, style.light_jitter))
    brightness = 1.0 + float(rng.normal(0.0, 0.04))

    yy, xx = _grid(height, width)
    dy, dx = yy - centre[0], xx - centre[1]
    c, si = float(np.cos(angle)), float(np.sin(angle))
    u = dx * c + dy * si
    v = -dx * si + dy * c
    side = min(height, width)
    half = (style.extent[0] * side * zoom, style.extent[1] * side * zoom)
    sdf = _shape_sdf(style, u, v, half, yy, xx)
    geometry = Geometry(style.shape, centre, half, size, sdf)
    part = sdf <= 0.0

    texture, albedo = _SURFACES[style.texture](style, rng, u, v, half, s)
    lc, ls = float(np.cos(light_angle)), float(np.sin(light_angle))
    ramp = (dx * lc + dy * ls) / float(np.hypot(height, width))
    shade = (1.0 + style.texture_amp * texture) * ((1.0 + style.light * ramp) * brightness)
    back_shade = (1.0 + 0.5 * style.light * ramp) * brightness
    if style.background_texture:
        mottle = _lowfreq(rng, size, max(2, round(3 * s)))
        mottle += 0.5 * rng.standard_normal(size, dtype=np.float32)
        back_shade = back_shade * (1.0 + style.background_texture * mottle)
    glow = None
    if style.specular:
        hy = -ls * 0.25 * side + float(rng.normal(0.0, 0.04 * side))
        hx = -lc * 0.25 * side + float(rng.normal(0.0, 0.04 * side))
        spread = 2 * (0.18 * side) ** 2
        glow = (0.5 * style.specular) * np.exp(-((dy - hy) ** 2 + (dx - hx) ** 2) / spread)
    if not geometry.full_frame:
        # a soft contact shadow around the part, and a darker rim that reads as a solid edge
        back_shade = back_shade * (1.0 - style.shadow * np.exp(-np.maximum(sdf, 0.0) / (5.0 * s)))
        rim = np.where(part & (sdf > -2.0 * s), np.float32(0.8), np.float32(1.0))
        shade = shade * rim
        if glow is not None:
            glow = glow * rim
    grain = rng.standard_normal((height, width), dtype=np.float32) * style.noise
    background = np.asarray(style.background, dtype=np.float32) * back_shade[..., None]
    background += grain[..., None]
    image = albedo * shade[..., None]
    image += (grain if glow is None else grain + glow)[..., None]
    image = np.where(part[..., None], image, background)
    return Product(image.astype(np.float32), background.astype(np.float32), texture, geometry)


def _shape_sdf(
    style: Style,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    yy: np.ndarray,
    xx: np.ndarray,
) -> np.ndarray:
    shape = style.shape
    if shape == "frame":
        height, width = yy.shape
        border = np.minimum(np.minimum(yy, xx), np.minimum(height - 1 - yy, width - 1 - xx))
        return np.asarray(-(border + 1.0), dtype=np.float32)
    r = np.hypot(u, v)
    if shape in ("disc", "ring"):
        d = r - half[0]
    elif shape == "hexagon":
        d = _hexagon_sdf(u, v, half[0])
    elif shape == "capsule":
        d = np.hypot(np.maximum(np.abs(u) - half[1], 0.0), v) - half[0]
    elif shape == "rounded_rect":
        corner = 0.18 * min(half)
        qy = np.abs(v) - (half[0] - corner)
        qx = np.abs(u) - (half[1] - corner)
        outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
        d = outside + np.minimum(np.maximum(qx, qy), 0.0) - corner
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if style.hole:
        d = np.maximum(d, style.hole * half[0] - r)
    return np.asarray(d, dtype=np.float32)


def _hexagon_sdf(u: np.ndarray, v: np.ndarray, inradius: float) -> np.ndarray:
    """Signed distance to a regular hexagon with flat sides at distance ``inradius``."""
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(u), np.abs(v)
    dot = np.minimum(kx * px + ky * py, 0.0)
    px = px - 2.0 * dot * kx
    py = py - 2.0 * dot * ky
    px = px - np.clip(px, -kz * inradius, kz * inradius)
    py = py - inradius
    return np.asarray(np.hypot(px, py) * np.sign(py))


# --------------------------------------------------------------------------- surfaces
# Each returns (texture field, albedo H×W×3). The field is zero-mean, roughly unit amplitude.

Surface = Callable[
    [Style, np.random.Generator, np.ndarray, np.ndarray, tuple[float, float], float],
    tuple[np.ndarray, np.ndarray],
]


def _flat(style: Style, field_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    albedo = np.broadcast_to(np.asarray(style.base, dtype=np.float32), (*field_.shape, 3))
    return field_.astype(np.float32, copy=False), albedo


def _mix(style: Style, weight: np.ndarray, field_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo blending base (weight 0) into accent (weight 1)."""
    base = np.asarray(style.base, dtype=np.float32)
    accent = np.asarray(style.accent, dtype=np.float32)
    albedo = base + (accent - base) * np.clip(weight, 0.0, 1.0)[..., None].astype(np.float32)
    return field_.astype(np.float32), albedo


def _turned(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Lathe-turned metal: fine concentric grooves with a random radial profile."""
    r = np.hypot(u, v) / (style.period * s)
    length = int(r.max()) + 3
    profile = ndimage.gaussian_filter1d(rng.standard_normal(length), 0.7)
    profile /= profile.std() + 1e-6
    index = r.astype(np.int64)
    frac = r - index
    rings = profile[index] * (1 - frac) + profile[index + 1] * frac
    theta = np.arctan2(v, u)
    sheen = 0.5 * np.cos(2 * theta)  # anisotropic highlight of turned metal
    return _flat(style, 0.7 * rings + sheen)


def _brushed(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    length = int(np.abs(v).max()) * 2 + 4
    profile = ndimage.gaussian_filter1d(rng.standard_normal(length), 0.8)
    profile /= profile.std() + 1e-6
    index = np.clip((v + length / 2).astype(np.int64), 0, length - 1)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * u / (3 * style.period * s) + phase)
    return _flat(style, 0.8 * profile[index] + 0.3 * wave)


def _cast(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Sand-cast metal: grainy speckle with dark pits and a machined centre boss."""
    size = u.shape
    grains = ndimage.gaussian_filter(rng.standard_normal(size, dtype=np.float32), style.period * s)
    grains /= grains.std() + 1e-6
    pits = (rng.random(size) < 0.004 / max(s, 0.5) ** 2).astype(np.float32)
    pits = ndimage.gaussian_filter(pits, 0.8 * s) * 20
    r = np.hypot(u, v)
    boss = ((r > 0.28 * half[0]) & (r < 0.33 * half[0])).astype(np.float32)
    return _flat(style, np.clip(grains, -2.5, 2.5) / 1.5 - np.minimum(pits, 2.5) - 1.5 * boss)


def _rubber(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    size = u.shape
    fine = ndimage.gaussian_filter(rng.standard_normal(size, dtype=np.float32), 0.8 * s)
    fine /= fine.std() + 1e-6
    r = np.hypot(u, v) / half[0]
    mid = (1 + style.hole) / 2
    bead = np.cos(np.clip((r - mid) / (1 - style.hole) * 2 * np.pi, -np.pi, np.pi))
    return _flat(style, 0.5 * fine + 1.2 * bead)


def _capsule(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-tone gelatin capsule: coloured cap, pale body, a seam, a glossy stripe."""
    seam_at = float(rng.normal(0.1, 0.02)) * half[1]
    weight = (u > seam_at).astype(np.float32)
    seam = np.exp(-((u - seam_at) ** 2) / (2 * (1.2 * s) ** 2))
    roundness = 1.0 - (v / half[0]) ** 2
    gloss = np.exp(-((v + 0.4 * half[0]) ** 2) / (2 * (0.12 * half[0]) ** 2))
    field_ = 2.5 * np.clip(roundness, 0, 1) - 1.5 - 3.0 * seam + 4.0 * gloss
    return _mix(style, weight, field_)


def _glaze(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Glazed ceramic: smooth low-frequency mottling, a raised bevel along the edge."""
    mottle = _lowfreq(rng, u.shape, max(2, round(style.period * s)))
    edge = np.minimum(half[1] - np.abs(u), half[0] - np.abs(v))
    bevel = np.exp(-np.maximum(edge, 0.0) / (4.0 * s))
    return _flat(style, mottle + 2.5 * bevel * np.sign(u + v + 1e-3))


def _grain(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Plank wood: wavy long grain lines with darker late-wood and fine streaks."""
    size = u.shape
    wobble = _lowfreq(rng, size, max(4, round(40 * s))) * 5 * s
    p = style.period * s
    phase = (v + wobble + 0.0006 * u**2 / s) / p + rng.uniform(0, 10)
    late = np.abs(np.sin(np.pi * phase)) ** 6  # thin dark bands
    length = int(np.abs(v).max()) * 2 + 4
    streak = ndimage.gaussian_filter1d(rng.standard_normal(length), 0.6)
    streak /= streak.std() + 1e-6
    index = np.clip((v + wobble * 0.3 + length / 2).astype(np.int64), 0, length - 1)
    return _flat(style, 0.4 * streak[index] - 2.2 * late + 0.8)


def _pcb(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Solder mask with copper traces, gold pads and vias; the layout is the category's."""
    height, width = u.shape
    weight, field_ = _pcb_layout(style.look, height, width)
    oy, ox = (int(k) for k in rng.integers(0, 24, 2))
    weight = weight[oy : oy + height, ox : ox + width]
    field_ = field_[oy : oy + height, ox : ox + width]
    fine = 0.4 * rng.standard_normal(u.shape, dtype=np.float32)
    out_field, albedo = _mix(style, weight, field_ + fine)
    trace = (weight > 0.2) & (weight < 0.8)
    albedo[trace] = (0.25, 0.58, 0.30)  # copper under green solder mask
    return out_field, albedo


@lru_cache(maxsize=8)
def _pcb_layout(look: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([name_key(look), height, width])
    s = min(height, width) / 224.0
    h, w = height + 24, width + 24
    copper = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(copper)
    for _ in range(14):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        points = [(x, y)]
        for _ in range(int(rng.integers(2, 5))):
            if rng.random() < 0.5:
                x += float(rng.uniform(-90, 90)) * s
            else:
                y += float(rng.uniform(-90, 90)) * s
            points.append((x, y))
        draw.line(points, fill=128, width=max(2, round(3 * s)), joint="curve")
        for px, py in (points[0], points[-1]):
            rad = 5 * s
            draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=255)
    for _ in range(3):  # chip footprints: rows of rectangular pads
        x0, y0 = float(rng.uniform(0, w - 60 * s)), float(rng.uniform(0, h - 40 * s))
        for k in range(6):
            px = x0 + k * 9 * s
            draw.rectangle((px, y0, px + 5 * s, y0 + 10 * s), fill=255)
            draw.rectangle((px, y0 + 30 * s, px + 5 * s, y0 + 40 * s), fill=255)
    weight = np.asarray(copper, dtype=np.float32) / 255.0
    pads = weight > 0.9
    field_ = np.where(pads, 1.0, np.where(weight > 0.2, 0.6, 0.0)).astype(np.float32)
    # vias: dark holes in the pads' middles would need a second pass; a few drilled holes:
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(10):
        cy, cx = float(rng.uniform(0, h)), float(rng.uniform(0, w))
        ring = np.hypot(yy - cy, xx - cx)
        weight = np.where(ring < 4 * s, 1.0, weight)
        field_ = np.where(ring < 2 * s, -4.0, field_)
    return weight.astype(np.float32), field_.astype(np.float32)


def _weave(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Twill-like weave: coloured warp threads over pale weft in an over-under pattern."""
    p = style.period * s
    a = u / p + rng.uniform(0, 10)
    b = v / p + rng.uniform(0, 10)
    ia, ib = np.floor(a), np.floor(b)
    fa, fb = a - ia, b - ib
    warp_on_top = ((ia - ib) % 3) != 0  # 2/1 twill: diagonal ribs
    warp = np.sin(np.pi * fa) * (0.75 + 0.25 * np.sin(np.pi * fb))
    weft = np.sin(np.pi * fb) * (0.75 + 0.25 * np.sin(np.pi * fa))
    thread = np.where(warp_on_top, warp, weft)
    fuzz = 0.35 * rng.standard_normal(u.shape, dtype=np.float32)
    weight = np.where(warp_on_top, 0.0, 0.55)
    return _mix(style, weight, 2.0 * thread - 1.0 + fuzz)


def _mesh(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Woven wire mesh on a dark backing: round wires crossing at a fixed pitch."""
    p = style.period * s
    a = u / p + 0.5
    b = v / p + 0.5
    da = np.abs(a - np.round(a)) * p  # distance to the nearest wire, px
    db = np.abs(b - np.round(b)) * p
    radius = 2.2 * s
    wire_a = np.clip(1 - (da / radius) ** 2, 0, 1)
    wire_b = np.clip(1 - (db / radius) ** 2, 0, 1)
    top_a = ((np.floor(a) + np.floor(b)) % 2) == 0
    cover = np.maximum(wire_a, wire_b)
    front = np.where(
        top_a, np.where(wire_a > 0, wire_a, wire_b), np.where(wire_b > 0, wire_b, wire_a)
    )
    weight = (cover <= 0).astype(np.float32)  # accent (dark backing) between the wires
    return _mix(style, weight, 2.5 * np.sqrt(front) - 1.5)


def _veins(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Marble: a pale slab with a few long wavy grey veins that fade in and out, faint clouds."""
    size = u.shape
    weight = np.zeros(size, dtype=np.float32)
    for family, (period, width, reach) in enumerate(((1.0, 0.03, 0.6), (0.5, 0.008, 0.35))):
        turb = 0.5 * _lowfreq(rng, size, max(4, round(70 * s))) + 0.05 * _lowfreq(
            rng, size, max(2, round(20 * s))
        )
        theta = float(rng.uniform(0, np.pi)) + family * 0.9
        along = u * float(np.cos(theta)) + v * float(np.sin(theta))
        t = along / (style.period * period * s) + turb
        fade = np.clip(0.5 + 0.7 * _lowfreq(rng, size, max(4, round(50 * s))), 0, 1)
        weight += reach * np.exp(-(np.sin(np.pi * t) ** 2) / width) * fade
    cloud = _lowfreq(rng, size, max(3, round(30 * s)))
    weight += 0.1 * np.clip(cloud, 0, 2)
    return _mix(style, weight, 0.4 * cloud)


def _cable(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A sheathed three-core cable cut across: coloured insulation around stranded copper."""
    r0 = half[0]
    albedo = np.empty((*u.shape, 3), dtype=np.float32)
    albedo[:] = np.asarray(style.base, dtype=np.float32)
    field_ = 0.3 * rng.standard_normal(u.shape, dtype=np.float32)
    filler = np.hypot(u, v) < 0.84 * r0
    albedo[filler] = (0.62, 0.62, 0.60)
    colours = ((0.45, 0.28, 0.14), (0.20, 0.35, 0.75), (0.85, 0.75, 0.15))
    for k, colour in enumerate(colours):
        angle = np.pi / 2 + k * 2 * np.pi / 3
        cy, cx = 0.42 * r0 * float(np.sin(angle)), 0.42 * r0 * float(np.cos(angle))
        d = np.hypot(v - cy, u - cx)
        albedo[d < 0.36 * r0] = colour
        core = d < 0.23 * r0
        albedo[core] = (0.85, 0.50, 0.28)
        strands = np.cos(d / (0.055 * r0) * np.pi) * core
        field_ = field_ + 1.5 * strands
        field_ = field_ - 2.0 * ((d > 0.34 * r0) & (d < 0.36 * r0))
    return field_.astype(np.float32), albedo


def _glass(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A glass bottle seen from above: thick rim, shoulder and the dark opening."""
    r = np.hypot(u, v) / half[0]
    rim = np.exp(-((r - 0.9) ** 2) / 0.003)
    lip = np.exp(-((r - 0.42) ** 2) / 0.002)
    opening = r < 0.36
    field_ = 1.6 * rim + 2.0 * lip - 3.5 * opening + 0.8 * np.cos(6 * r) * (r > 0.45)
    field_ = field_ + 0.2 * rng.standard_normal(u.shape, dtype=np.float32)
    return _flat(style, field_)


def _solar(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A poly-crystalline solar cell: blue grains, thin silver fingers and two busbars."""
    size = u.shape
    crystals = np.round(_lowfreq(rng, size, max(3, round(12 * s))) * 2.0) / 2.0
    fine = 0.2 * rng.standard_normal(size, dtype=np.float32)
    p = style.period * s
    finger = np.abs(v / p - np.round(v / p)) * p < 0.9 * s
    offset = float(rng.uniform(-10, 10)) * s
    bus = np.zeros(size, dtype=bool)
    for centre in (-0.28, 0.28):
        bus |= np.abs(u - centre * min(size) - offset) < 4.0 * s
    weight = (finger | bus).astype(np.float32)
    return _mix(style, weight, crystals + fine)


def _cork(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Agglomerated cork: granules of varying tone with dark pores."""
    size = u.shape
    granules = np.round(_lowfreq(rng, size, max(2, round(4 * s))) * 1.5) / 1.5
    fine = ndimage.gaussian_filter(rng.standard_normal(size, dtype=np.float32), style.period * s)
    fine /= fine.std() + 1e-6
    pores = (fine < -2.0).astype(np.float32)
    return _flat(style, 0.7 * granules + 0.3 * fine - 2.0 * pores)


def _knurl(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A crown cap: fluted skirt at the edge, a flat painted top with an embossed ring."""
    r = np.hypot(u, v) / half[0]
    theta = np.arctan2(v, u)
    flutes = np.cos(21 * theta) * (r > 0.8)
    ring = np.exp(-((r - 0.62) ** 2) / 0.0015)
    dome = -0.8 * r**2
    field_ = (
        1.6 * flutes + 1.8 * ring + dome + 0.15 * rng.standard_normal(u.shape, dtype=np.float32)
    )
    return _flat(style, field_)


def _fibre(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut-pile carpet: dense tufts with a faint row structure and patchy pile direction."""
    size = u.shape
    tufts = ndimage.gaussian_filter(rng.standard_normal(size, dtype=np.float32), 1.3 * s)
    tufts /= tufts.std() + 1e-6
    rows = np.cos(2 * np.pi * v / (style.period * s))
    patch = _lowfreq(rng, size, max(3, round(30 * s)))
    return _flat(style, 0.9 * tufts + 0.25 * rows + 0.4 * patch)


def _pebble(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Pebbled leather: a network of fine creases around soft grains, stitched edge."""
    size = u.shape
    band = ndimage.gaussian_filter(rng.standard_normal(size, dtype=np.float32), style.period * s)
    band /= band.std() + 1e-6
    creases = np.exp(-(band**2) / 0.08)
    edge = np.minimum(half[1] - np.abs(u), half[0] - np.abs(v))
    along = np.where(np.abs(u) / half[1] > np.abs(v) / half[0], v, u)
    stitch = (np.abs(edge - 8 * s) < 1.1 * s) & (np.cos(2 * np.pi * along / (7 * s)) > 0)
    return _flat(style, 0.6 * band - 1.4 * creases + 2.5 * stitch)


def _tablet(
    style: Style,
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    half: tuple[float, float],
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A round pressed tablet: bevelled edge and a score line across."""
    r = np.hypot(u, v) / half[0]
    bevel = np.clip((r - 0.82) / 0.18, 0, 1)
    score = np.exp(-(v**2) / (2 * (1.3 * s) ** 2)) * (r < 0.85)
    speck = 0.3 * rng.standard_normal(u.shape, dtype=np.float32)
    return _flat(style, -2.0 * bevel * np.sign(u + 1e-3) - 4.0 * score + speck)


_SURFACES: dict[str, Surface] = {
    "turned": _turned,
    "brushed": _brushed,
    "cast": _cast,
    "rubber": _rubber,
    "capsule": _capsule,
    "glaze": _glaze,
    "grain": _grain,
    "pcb": _pcb,
    "weave": _weave,
    "mesh": _mesh,
    "veins": _veins,
    "cable": _cable,
    "glass": _glass,
    "solar": _solar,
    "cork": _cork,
    "knurl": _knurl,
    "fibre": _fibre,
    "pebble": _pebble,
    "tablet": _tablet,
}


# --------------------------------------------------------------------------- helpers


@lru_cache(maxsize=16)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _lowfreq(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth noise (std about 1) with features about ``cell`` pixels across."""
    height, width = size
    coarse = rng.standard_normal((height // cell + 4, width // cell + 4), dtype=np.float32)
    big = (coarse.shape[1] * cell, coarse.shape[0] * cell)
    fine = np.asarray(Image.fromarray(coarse, mode="F").resize(big, Image.Resampling.BICUBIC))
    return np.asarray(fine[cell : cell + height, cell : cell + width] / 0.82, dtype=np.float32)


def _shift_colour(colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, sat, val = colorsys.rgb_to_hsv(*(float(c) for c in colour))
    h = (h + float(rng.normal(0.0, 0.02))) % 1.0
    val = float(np.clip(val * rng.uniform(0.9, 1.1), 0.0, 1.0))
    return np.asarray(colorsys.hsv_to_rgb(h, sat, val), dtype=np.float32)


def _contamination_colour(base: np.ndarray) -> Colour:
    lum = _luminance(np.asarray(base))
    if lum < 0.35:
        return (0.88, 0.86, 0.80)  # pale dust and lint on dark products
    return (0.10, 0.08, 0.06)  # dark hair, oil and grit on light ones


def _luminance(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _rgb(values: np.ndarray) -> Colour:
    clipped = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return float(clipped[0]), float(clipped[1]), float(clipped[2])


__all__ = [
    "LOOKS",
    "MIN_SIDE",
    "SHAPES",
    "TEXTURES",
    "Geometry",
    "Product",
    "Style",
    "category_style",
    "check_size",
    "name_key",
    "render_product",
    "to_uint8",
]
