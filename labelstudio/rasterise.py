"""Annotation → mask: the regions of a Label Studio annotation drawn as one binary mask.

Brush (RGBA run-length code, alpha = mask), polygon and rectangle regions are given in percent
of the image size (``original_width``/``original_height``); their union is the defect mask,
because what matters downstream is "defect or not" per pixel, not which tool drew it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

#: A binary mask, (height, width).
Mask = npt.NDArray[np.bool_]

#: Result types that draw pixels on the image; ``brush`` etc. come from label-less tools.
REGION_TYPES = frozenset(
    {"brushlabels", "brush", "polygonlabels", "polygon", "rectanglelabels", "rectangle"}
)


def rasterise(items: list[Any], image_name: str | None) -> tuple[Mask | None, list[str]]:
    """Union mask of the region items on ``image_name`` (all images when None), and labels."""
    size, regions, labels = _regions(items, image_name)
    if size is None:
        return None, labels
    mask = np.zeros(size, dtype=bool)
    for item in regions:
        mask |= _draw(item, size)
    return mask, labels


def rasterise_by_label(items: list[Any], image_name: str | None) -> dict[str, Mask]:
    """One mask per label: the union of the regions that carry exactly that one label (what a
    defect-type classifier learns from); regions with no label or several are left out."""
    size, regions, _ = _regions(items, image_name)
    masks: dict[str, Mask] = {}
    if size is None:
        return masks
    for item in regions:
        names = (item.get("value") or {}).get(str(item["type"]).lower()) or []
        if len(names) == 1 and isinstance(names[0], str):
            drawn = _draw(item, size)
            masks[names[0]] = masks[names[0]] | drawn if names[0] in masks else drawn
    return {label: mask for label, mask in masks.items() if mask.any()}


def _regions(
    items: list[Any], image_name: str | None
) -> tuple[tuple[int, int] | None, list[dict[str, Any]], list[str]]:
    """(image size, the region items on ``image_name``, every label named), validated."""
    labels: list[str] = []
    size: tuple[int, int] | None = None
    regions: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("result items must be objects")
        if image_name is not None and item.get("to_name", image_name) != image_name:
            continue
        kind = str(item.get("type", "")).lower()
        raw = item.get("value")
        value: dict[str, Any] = raw if isinstance(raw, dict) else {}
        for label in value.get(kind) or []:
            if isinstance(label, str) and label not in labels:
                labels.append(label)
        if "original_height" in item and "original_width" in item:
            item_size = (as_int(item["original_height"], "original_height"),
                         as_int(item["original_width"], "original_width"))  # fmt: skip
            if min(item_size) <= 0:
                raise ValueError(f"image size must be positive, got {item_size}")
            if size is not None and item_size != size:
                raise ValueError(f"result items disagree on the image size: {size} vs {item_size}")
            size = item_size
        if kind in REGION_TYPES:
            if "original_height" not in item or "original_width" not in item:
                raise ValueError(f"{kind} item without original_width/original_height")
            regions.append(item)
    return size, regions, labels


def _draw(item: dict[str, Any], size: tuple[int, int]) -> Mask:
    kind = item["type"].lower()
    value = item.get("value") or {}
    if kind.startswith("brush"):
        return _brush(value, size)
    if kind.startswith("polygon"):
        return _polygon(value, size)
    return _rectangle(value, size)


def _brush(value: dict[str, Any], size: tuple[int, int]) -> Mask:
    from label_studio_sdk.converter.brush import decode_rle as decode_brush

    rle = value.get("rle")
    if not isinstance(rle, list) or not rle:
        raise ValueError("brush item without an 'rle' list")
    try:
        flat = decode_brush(rle)
    except Exception as exc:  # a truncated bit stream fails deep inside the SDK
        raise ValueError(f"brush RLE does not decode: {exc}") from exc
    height, width = size
    if flat.size != height * width * 4:
        raise ValueError(f"brush RLE holds {flat.size} values, expected {height}×{width}×4")
    alpha: Mask = np.asarray(flat).reshape(height, width, 4)[:, :, 3] > 0
    return alpha


def _polygon(value: dict[str, Any], size: tuple[int, int]) -> Mask:
    height, width = size
    points = value.get("points")
    if not isinstance(points, list):
        raise ValueError("polygon item without a 'points' list")
    try:
        # Percent → pixel edges; PIL puts pixel centres on integers, hence the half-pixel shift.
        xy = [(float(x) * width / 100 - 0.5, float(y) * height / 100 - 0.5) for x, y in points]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"polygon points must be [x, y] pairs: {exc}") from exc
    canvas = Image.new("1", (width, height), 0)
    if len(xy) < 3:
        logger.warning("polygon with %d point(s) ignored", len(xy))
    else:
        ImageDraw.Draw(canvas).polygon(xy, fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def _rectangle(value: dict[str, Any], size: tuple[int, int]) -> Mask:
    height, width = size
    try:
        x, y = float(value["x"]), float(value["y"])
        w, h = float(value["width"]), float(value["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"rectangle needs numeric x, y, width, height: {exc}") from exc
    if float(value.get("rotation") or 0) % 360:
        logger.warning(
            "rectangle rotated by %s° rasterised unrotated (rotation is not supported)",
            value.get("rotation"),
        )
    mask = np.zeros(size, dtype=bool)
    if w <= 0 or h <= 0:
        return mask
    # A pixel belongs to the box when its centre does; a sliver still marks one pixel.
    x0, x1 = _span(x * width / 100, (x + w) * width / 100, width)
    y0, y1 = _span(y * height / 100, (y + h) * height / 100, height)
    mask[y0:y1, x0:x1] = True
    return mask


def _span(start: float, stop: float, limit: int) -> tuple[int, int]:
    lo = max(0, min(limit, math.floor(start + 0.5)))
    hi = max(0, min(limit, math.floor(stop + 0.5)))
    if hi <= lo and lo < limit:
        hi = lo + 1
    return lo, hi


def as_int(value: Any, what: str) -> int:
    """``value`` as an int; ValueError naming ``what`` when it is missing or not a number."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"missing {what}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
