"""MMR, Multi-level Mask Refinement (method spec §3): coarse map → prompts → SAM → fused map.

Components of ``A > τ`` become point and box prompts; SAM decodes three prompt levels (point,
box, point + box), each as one batched call; the levels' soft unions are blended back into A.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from torch import Tensor

from clipsam.config import MMRConfig
from clipsam.sam_backbone import SamBackbone

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Component:
    """One connected region of the thresholded coarse map, in original-image pixels."""

    mask: np.ndarray  # bool (H, W)
    box: tuple[int, int, int, int]  # XYXY, x1/y1 exclusive
    peak: tuple[int, int]  # (x, y) of the highest A inside
    peak_score: float
    centroid: tuple[float, float]  # (x, y)


def find_components(amap: np.ndarray, config: MMRConfig) -> list[Component]:
    """8-connected components of ``amap > τ`` over the minimum area, top-K by peak score."""
    binary = amap > config.tau
    if not binary.any():
        return []
    labels, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
    index = np.arange(1, count + 1)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    peaks = np.asarray(ndimage.maximum(amap, labels, index), dtype=np.float64)
    keep = np.flatnonzero(areas >= config.min_area_frac * amap.size)
    keep = keep[np.argsort(-peaks[keep], kind="stable")][: config.top_k]
    slices = ndimage.find_objects(labels)
    components = []
    for i in keep:
        label = i + 1
        ys, xs = slices[i]
        mask = labels == label
        local = np.where(mask[ys, xs], amap[ys, xs], -np.inf)
        py, px = np.unravel_index(int(np.argmax(local)), local.shape)
        cy, cx = ndimage.center_of_mass(mask[ys, xs])
        components.append(
            Component(
                mask=mask,
                box=(xs.start, ys.start, xs.stop, ys.stop),
                peak=(xs.start + int(px), ys.start + int(py)),
                peak_score=float(peaks[i]),
                centroid=(xs.start + float(cx), ys.start + float(cy)),
            )
        )
    return components


def prompts_for(
    components: list[Component], shape: tuple[int, int], config: MMRConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Positive points (K, P, 2) XY and grown, clipped boxes (K, 4) XYXY for SAM."""
    height, width = shape
    points, boxes = [], []
    for comp in components:
        pts = [comp.peak]
        if config.centroid_point:
            pts.append((round(comp.centroid[0]), round(comp.centroid[1])))
        points.append(pts)
        x0, y0, x1, y1 = comp.box
        gx, gy = config.box_grow * (x1 - x0) / 2, config.box_grow * (y1 - y0) / 2
        boxes.append(
            (max(0.0, x0 - gx), max(0.0, y0 - gy), min(width, x1 + gx), min(height, y1 + gy))
        )
    return np.asarray(points, dtype=np.float32), np.asarray(boxes, dtype=np.float32)


@dataclass
class Refinement:
    """MMR's output for one image: the fused map and each component's SAM masks."""

    final_map: np.ndarray  # float32 (H, W) in [0, 1]
    sam_masks: list[np.ndarray]  # per component: bool (H, W), union over the three levels


def refine(
    amap: np.ndarray,
    components: list[Component],
    embedding: Tensor,
    sam: SamBackbone,
    config: MMRConfig,
) -> Refinement:
    """Run the three prompt levels (one decoder call each) and fuse them with ``amap``."""
    shape = (int(amap.shape[0]), int(amap.shape[1]))
    points, boxes = prompts_for(components, shape, config)
    levels = decode_levels(sam, embedding, shape, points, boxes)
    union = np.logical_or.reduce([masks for masks, _ in levels])
    return Refinement(fuse(amap, levels, config.lambdas), list(union))


Level = tuple[np.ndarray, np.ndarray]  # masks (K, H, W) bool, SAM's predicted IoU (K,)


def decode_levels(
    sam: SamBackbone,
    embedding: Tensor,
    shape: tuple[int, int],
    points: np.ndarray,
    boxes: np.ndarray,
) -> list[Level]:
    """MMR's three prompt levels, each one decoder call batched over the components: L1 the
    point (multimask, the best of three), L2 the box, L3 point + box."""
    levels = (
        sam.decode(embedding, shape, points=points, multimask=True),
        sam.decode(embedding, shape, boxes=boxes),
        sam.decode(embedding, shape, points=points, boxes=boxes),
    )
    return [(masks.cpu().numpy(), iou.float().cpu().numpy()) for masks, iou in levels]


def fuse(amap: np.ndarray, levels: list[Level], lambdas: tuple[float, ...]) -> np.ndarray:
    """The fused map (A + Σ λ_l · M_l) / (1 + Σ λ), M_l = max over components of IoU × mask."""
    fused = amap.astype(np.float32).copy()
    for weight, (masks, iou) in zip(lambdas, levels, strict=True):
        fused += weight * (np.clip(iou, 0, 1)[:, None, None] * masks).max(axis=0)
    fused /= 1.0 + sum(lambdas)
    return np.clip(fused, 0.0, 1.0)
