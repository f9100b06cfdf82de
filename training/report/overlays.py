"""Overlay tiles: per chosen image, the input, its anomaly map in jet, and the predicted and true
masks outlined, as PNG files the report links to."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from clipsam.data import Sample
from clipsam.images import load_image

#: Longest side of an overlay tile, in pixels: big enough to see a scratch, small on disk.
TILE_SIDE = 224
#: Outline colours of the predicted and the true mask (the page's key shows them too).
PRED_RGB = (255, 40, 40)
GT_RGB = (40, 230, 40)
#: "jet" anchors (position, RGB 0-1); the same gradient is the HTML colour bar.
_JET = (
    (0.0, (0.0, 0.0, 0.5)),
    (0.125, (0.0, 0.0, 1.0)),
    (0.375, (0.0, 1.0, 1.0)),
    (0.625, (1.0, 1.0, 0.0)),
    (0.875, (1.0, 0.0, 0.0)),
    (1.0, (0.5, 0.0, 0.0)),
)
_MAP_ALPHA = 0.6


@dataclass
class OverlayRow:
    """One image of the grid: a caption and its four tiles (paths relative to the report)."""

    caption: str
    tiles: tuple[str, str, str, str]  # input, anomaly map, predicted outline, ground truth


def overlay_order(scores: Sequence[float], labels: Sequence[int], k: int) -> list[int]:
    """Indices of up to ``k`` images worth looking at: the defects the model scores lowest
    (missed first), then the good images it scores highest (false alarms first)."""
    defect = sorted((i for i, y in enumerate(labels) if y > 0), key=lambda i: (scores[i], i))
    good = sorted((i for i, y in enumerate(labels) if y <= 0), key=lambda i: (-scores[i], i))
    return (defect + good)[: max(0, k)]


def write_overlays(
    folder: Path,
    rel_to: Path,
    samples: Sequence[Sample],
    maps: Sequence[np.ndarray],
    pred_masks: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    scores: Sequence[float],
    indices: Sequence[int],
) -> list[OverlayRow]:
    """Write four PNG tiles per chosen image under ``folder``; paths come back relative."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for rank, i in enumerate(indices):
        sample = samples[i]
        image = load_image(sample.image_path)
        size = _tile_size(image.shape[:2])
        base = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        tiles = {
            "input": base,
            "map": _heat(base, maps[i], size),
            "pred": _outline(base, pred_masks[i], size, PRED_RGB),
            "gt": _outline(base, gt_masks[i], size, GT_RGB),
        }
        stem = f"{rank:02d}-{slug(sample.defect_type or 'image')}-{slug(sample.image_path.stem)}"
        paths = []
        for kind, tile in tiles.items():
            path = folder / f"{stem}-{kind}.png"
            Image.fromarray(tile).save(path)
            paths.append(path.relative_to(rel_to).as_posix())
        kind = sample.defect_type or ("defect" if sample.label > 0 else "good")
        where = f"{sample.image_path.parent.name}/{sample.image_path.name}"
        caption = f"{where} · {kind} · score {scores[i]:.3f}"
        rows.append(OverlayRow(caption, (paths[0], paths[1], paths[2], paths[3])))
    return rows


def _tile_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """(width, height) with the longest side TILE_SIDE, aspect kept (small images grow)."""
    height, width = int(shape[0]), int(shape[1])
    scale = TILE_SIDE / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _lut() -> np.ndarray:
    pos = [p for p, _ in _JET]
    grid = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(grid, pos, [c[ch] for _, c in _JET]) for ch in range(3)]
    return (np.stack(channels, axis=1) * 255).round().astype(np.uint8)


_LUT = _lut()


def _heat(base: np.ndarray, amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The map in jet on a fixed [0, 1] scale (comparable across images), over a grey input."""
    small = np.asarray(_resized(np.asarray(amap, dtype=np.float32), size, bilinear=True))
    colored = _LUT[(np.clip(small, 0.0, 1.0) * 255).round().astype(np.uint8)].astype(np.float32)
    grey = base.astype(np.float32).mean(axis=2, keepdims=True)
    return (_MAP_ALPHA * colored + (1 - _MAP_ALPHA) * grey).round().astype(np.uint8)


def _outline(
    base: np.ndarray, mask: np.ndarray, size: tuple[int, int], rgb: tuple[int, int, int]
) -> np.ndarray:
    """The input with the mask's boundary drawn ~2 px wide (nothing for an empty mask)."""
    small = np.asarray(_resized(np.asarray(mask, dtype=np.uint8) * 255, size)) > 127
    out = base.copy()
    if small.any():
        edge = small & ~ndimage.binary_erosion(small, border_value=0)
        out[ndimage.binary_dilation(edge)] = rgb
    return out


def _resized(array: np.ndarray, size: tuple[int, int], bilinear: bool = False) -> Image.Image:
    method = Image.Resampling.BILINEAR if bilinear else Image.Resampling.NEAREST
    return Image.fromarray(array).resize(size, method)


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (datasets name classes and files freely)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
