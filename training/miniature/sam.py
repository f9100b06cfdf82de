"""Train micro-SAM: segment-anything's own modules at a small size, on the synthetic world, on CPU.

No pretrained SAM can be downloaded here, so tests of the MMR stage need a SAM that does what
SAM does: a prompt (a point, a box, or both) gives the mask it points at. This trains one the
way SAM was trained (image encoder, prompt encoder and mask decoder all trainable):

* data: a pool of synthetic images of the *training* categories only, rendered once and then
  augmented (flips, 90° rotations); the targets are each connected defect component, the
  whole part (the product) and objects pasted on the fly (ellipses, polygons, strokes);
* a curriculum (:class:`Curriculum`): from scratch, the decoder first settles on one answer
  for every prompt and small targets never pull it out, so training starts on large pasted
  objects alone until the prompt is followed, then the world's targets join and the objects
  shrink;
* prompts, one per target and step: one positive point (uniform over the mask, sometimes its
  most interior point), a box (the mask's bounding box, jittered by a few percent), or both;
* loss: focal (×20) + dice (×1) on the low-res logits upsampled to the mask, plus the MSE
  between the predicted IoU and the actual IoU of each predicted mask. Single-point prompts
  use the three-mask output and back-propagate only the best of the three masks.

One image embedding serves all prompts of its image; each prompt kind is one batched decoder
call over the whole batch. The held-out categories are evaluated at the end through
:meth:`clipsam.sam_backbone.SamBackbone.decode` (the path the pipeline uses); the figures, the
training config and the seed go into the safetensors metadata.

    python -m training.miniature.sam --out clipsam/model_weights/micro_sam.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage
from segment_anything.modeling import Sam
from torch import Tensor
from tqdm import tqdm

from clipsam.data import world
from clipsam.logging_setup import configure_logging
from clipsam.sam_backbone import (
    MICRO_SAM_ARCH,
    MICRO_SAM_WEIGHTS,
    SamBackbone,
    build_sam_model,
    load_micro_sam,
)

logger = logging.getLogger(__name__)

#: Defect components smaller than this (pixels at the training size) are not prompted.
MIN_COMPONENT = 24
#: Fragments of one defect this close (pixels) count as one component (a broken scratch).
BRIDGE = 2


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class WorldSample:
    """One rendered image and its targets: defect components, then the whole part."""

    image: np.ndarray  # uint8 (H, W, 3)
    defects: tuple[np.ndarray, ...]  # bool (H, W), one connected defect component each
    part: np.ndarray  # bool (H, W)


def render(
    category: str, rng: np.random.Generator, size: tuple[int, int], defect_types: Sequence[str]
) -> WorldSample:
    """One world image with its connected defect components and its part mask."""
    sample = world.render_sample(category, rng, size=size, defect_types=tuple(defect_types))
    defects = components([np.asarray(mask, dtype=bool) for _kind, mask in sample.defects])
    return WorldSample(sample.image, tuple(defects), np.asarray(sample.part_mask, dtype=bool))


def components(masks: Sequence[np.ndarray], min_area: int = MIN_COMPONENT) -> list[np.ndarray]:
    """The connected components of each mask (fragments under :data:`BRIDGE` pixels apart
    joined), largest first, at least ``min_area`` pixels."""
    out = []
    square = np.ones((3, 3), dtype=bool)
    for mask in masks:
        grown = ndimage.binary_dilation(mask, square, iterations=BRIDGE)
        labels, count = ndimage.label(grown, structure=square)
        labels[~mask] = 0
        if count == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        for label in np.argsort(-areas[1:]) + 1:
            if areas[label] >= min_area:
                out.append(labels == label)
    return out


# --------------------------------------------------------------------------- the pool


@dataclass(frozen=True)
class PoolItem:
    """A pool image at the training size, with packed target masks (defects, then the part)."""

    image: np.ndarray  # uint8 (S, S, 3)
    masks: np.ndarray  # uint8 (T, S·S/8), np.packbits of each bool mask
    n_defects: int


def _render_item(args: tuple[int, int, int, tuple[str, ...], tuple[str, ...]]) -> PoolItem:
    seed, index, img_size, categories, defect_types = args
    rng = np.random.default_rng([seed, index])
    category = categories[index % len(categories)]
    n_defects = int(rng.choice(4, p=(0.1, 0.4, 0.3, 0.2)))
    kinds = tuple(rng.choice(defect_types, size=n_defects)) if n_defects else ()
    side = int(rng.choice((224, img_size)))  # two scales, resized to the model's size
    sample = render(category, rng, (side, side), [str(k) for k in kinds])
    image, masks = sample.image, [*sample.defects, sample.part]
    if side != img_size:
        image = np.asarray(
            Image.fromarray(image).resize((img_size, img_size), Image.Resampling.BILINEAR)
        )
        masks = [
            np.asarray(Image.fromarray(m).resize((img_size, img_size), Image.Resampling.NEAREST))
            for m in masks
        ]
        masks = [m for m in masks[:-1] if m.sum() >= MIN_COMPONENT] + [masks[-1]]
    packed = np.stack([np.packbits(m.ravel()) for m in masks])
    return PoolItem(np.ascontiguousarray(image), packed, len(masks) - 1)


def render_pool(
    n: int, seed: int, img_size: int, categories: Sequence[str], defect_types: Sequence[str]
) -> list[PoolItem]:
    """Render ``n`` training images (in worker processes; each image seeded by its index)."""
    jobs = [(seed, i, img_size, tuple(categories), tuple(defect_types)) for i in range(n)]
    workers = min(len(os.sched_getaffinity(0)), 4)
    bar = tqdm(total=n, desc="render", unit="img", mininterval=2.0)
    items: list[PoolItem] = []
    if workers <= 1:
        for job in jobs:
            items.append(_render_item(job))
            bar.update()
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for item in pool.imap(_render_item, jobs, chunksize=8):
                items.append(item)
                bar.update()
    bar.close()
    return items


# --------------------------------------------------------------------------- prompts


@dataclass
class Prompts:
    """Prompts of one kind for a batch: which image, the target, and the coordinates (XY)."""

    image: list[int]
    target: list[np.ndarray]
    source: list[str]  # "defect", "shape" or "part" (for the training log)
    points: list[tuple[float, float]]
    boxes: list[tuple[float, float, float, float]]


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """The mask pixel farthest from the background, as (x, y)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def random_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(ys)))
    return float(xs[i]), float(ys[i])


def bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """XYXY, exclusive ends (as MMR's component boxes)."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def jittered_box(
    mask: np.ndarray, rng: np.random.Generator, jitter: float, size: int
) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = bbox(mask)
    sx, sy = jitter * (x1 - x0), jitter * (y1 - y0)
    noise = rng.normal(0.0, 1.0, 4) * np.array([sx, sy, sx, sy])
    noise = np.clip(noise, -20.0, 20.0)
    bx0, by0 = np.clip((x0 + noise[0], y0 + noise[1]), 0, size - 1)
    bx1 = float(np.clip(x1 + noise[2], bx0 + 1, size))
    by1 = float(np.clip(y1 + noise[3], by0 + 1, size))
    return float(bx0), float(by0), bx1, by1


def augment(image: np.ndarray, masks: np.ndarray, k: int, flip: bool) -> tuple[Any, Any]:
    """The same 90°·k rotation (and horizontal flip) of an (H, W, 3) image and (T, H, W) masks."""
    image, masks = np.rot90(image, k, axes=(0, 1)), np.rot90(masks, k, axes=(1, 2))
    if flip:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(masks)


def paste_shapes(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    count: int,
    sizes: tuple[float, float] = (5.0, 60.0),
    styles: int = 3,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Paint ``count`` random objects (ellipses, polygons, strokes; ``sizes`` px, any contrast)
    over ``image``; occlude ``masks`` (T, H, W) by them. Returns the image, the masks and the
    objects' masks. Many clearly localised targets per encoder pass teach the decoder "the thing
    at the prompt" far sooner than the world's few defects alone."""
    height, width = image.shape[:2]
    out = image.astype(np.float32)
    shapes: list[np.ndarray] = []
    for _ in range(count):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        size = float(np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]))))
        cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
        style = int(rng.integers(styles))  # 1: ellipses only
        if style == 0:
            rx, ry = size / 2 * rng.uniform(0.3, 1.0, 2)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
        elif style == 1:
            n = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = size / 2 * rng.uniform(0.4, 1.0, n)
            draw.polygon(
                [
                    (cx + r * np.cos(t), cy + r * np.sin(t))
                    for r, t in zip(radii, angles, strict=True)
                ],
                fill=255,
            )
        else:
            t = rng.uniform(0, np.pi)
            dx, dy = size * np.cos(t), size * np.sin(t)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=int(rng.integers(2, 5)))
        shape = np.asarray(canvas) > 0
        if shape.sum() < MIN_COMPONENT:
            continue
        colour = rng.uniform(0, 255, 3)
        alpha = rng.uniform(0.35, 1.0)
        noise = rng.normal(0, rng.uniform(0, 12), (int(shape.sum()), 1))
        out[shape] = (1 - alpha) * out[shape] + alpha * (colour + noise)
        masks = masks & ~shape
        shapes = [m & ~shape for m in shapes]
        shapes.append(shape)
    shapes = [m for m in shapes if m.sum() >= MIN_COMPONENT]
    return np.clip(out, 0, 255).astype(np.uint8), masks, shapes


@dataclass(frozen=True)
class Stage:
    """What a batch holds at one point of the curriculum."""

    sizes: tuple[float, float]  # pasted objects' size range (px)
    world: bool  # the world's defects and parts are targets too
    p_flat: float  # chance that an image's background is one flat colour
    styles: int = 3  # pasted objects: 1 = ellipses only, 3 = ellipses, polygons and strokes
    kinds: tuple[str, ...] = ("point", "box", "point_box")  # prompt kinds drawn


class Curriculum:
    """From scratch, SAM's decoder first settles on one answer for every prompt (the part, or
    nothing); small targets never pull it out of that, large ones do within a few hundred
    steps, provided no single answer fits them all.

    So training starts on pasted objects alone (``cfg.max_shapes`` large ellipses per image on
    flat backgrounds, box prompts) until the decoder follows the prompt (running IoU on them reaches
    ``cfg.prompt_iou``, or ``cfg.objects_until`` of training has passed). Then the world's
    targets join and the objects shrink log-linearly to ``cfg.small_sizes`` over the next
    ``cfg.shrink`` of training.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.switched_at: float | None = None
        self.recent: list[float] = []

    def observe(self, shape_ious: Sequence[float], done: float) -> None:
        if self.switched_at is not None:
            return
        self.recent = [*self.recent, *shape_ious][-100:]
        ready = len(self.recent) >= 100 and float(np.mean(self.recent)) >= self.cfg.prompt_iou
        if ready or done >= self.cfg.objects_until:
            self.switched_at = done

    def stage(self, done: float) -> Stage:
        cfg = self.cfg
        if self.switched_at is None:
            return Stage(cfg.big_sizes, False, 1.0, styles=1, kinds=("box", "point_box"))
        t = min(1.0, (done - self.switched_at) / cfg.shrink) if cfg.shrink > 0 else 1.0
        low = math.exp((1 - t) * math.log(cfg.big_sizes[0]) + t * math.log(cfg.small_sizes[0]))
        high = math.exp((1 - t) * math.log(cfg.big_sizes[1]) + t * math.log(cfg.small_sizes[1]))
        return Stage((low, high), True, 0.0)


def make_batch(
    pool: list[PoolItem],
    rng: np.random.Generator,
    cfg: TrainConfig,
    img_size: int,
    stage: Stage | None = None,
) -> tuple[Tensor, dict[str, Prompts]]:
    """``cfg.batch`` augmented pool images and one prompt per target, grouped by prompt kind.

    The targets of an image: pasted objects (:class:`Curriculum`), up to ``cfg.max_defects``
    defect components and, with probability ``cfg.p_part`` (always on a good image), the
    whole part.
    """
    stage = stage or Stage(cfg.small_sizes, True, 0.0)
    sizes, with_world = stage.sizes, stage.world
    images = []
    groups = {kind: Prompts([], [], [], [], []) for kind in ("point", "box", "point_box")}
    for b, index in enumerate(rng.choice(len(pool), size=cfg.batch, replace=False)):
        item = pool[int(index)]
        bits = np.unpackbits(item.masks, axis=1, count=img_size * img_size)
        masks = bits.reshape(-1, img_size, img_size).astype(bool)
        image, masks = augment(item.image, masks, int(rng.integers(4)), bool(rng.integers(2)))
        shapes: list[np.ndarray] = []
        if rng.random() < stage.p_flat:
            flat = rng.uniform(0, 255, 3) + rng.normal(0, rng.uniform(0, 8), image.shape)
            image = np.clip(flat, 0, 255).astype(np.uint8)
        if not with_world:  # objects only, as many as allowed: no one answer fits them all
            image, masks, shapes = paste_shapes(
                image, masks, rng, cfg.max_shapes, sizes, stage.styles
            )
        elif cfg.max_shapes and rng.random() < cfg.p_shapes:
            count = int(rng.integers(1, cfg.max_shapes + 1))
            image, masks, shapes = paste_shapes(image, masks, rng, count, sizes)
        images.append(image)
        chosen = []
        if with_world:
            chosen = list(rng.permutation(item.n_defects)[: cfg.max_defects])
            if not chosen or rng.random() < cfg.p_part:
                chosen.append(item.n_defects)
        targets = [
            (masks[t], "part" if t == item.n_defects else "defect")
            for t in chosen
            if masks[t].sum() >= MIN_COMPONENT
        ]
        for mask, source in [*targets, *((shape, "shape") for shape in shapes)]:
            kind = str(rng.choice(stage.kinds))
            group = groups[kind]
            group.image.append(b)
            group.target.append(mask)
            group.source.append(source)
            if kind != "box":
                interior = rng.random() < cfg.p_interior
                group.points.append(interior_point(mask) if interior else random_point(mask, rng))
            if kind != "point":
                group.boxes.append(jittered_box(mask, rng, cfg.box_jitter, img_size))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return pixels, groups


# --------------------------------------------------------------------------- model and loss


def decode_batched(
    sam: Sam, embeddings: Tensor, prompts: Prompts, multimask: bool
) -> tuple[Tensor, Tensor]:
    """Low-res logits (K, M, h, w) and IoU predictions (K, M) for prompts over several images.

    ``MaskDecoder.predict_masks`` with the image embedding gathered per prompt instead of
    repeated (stock SAM decodes the prompts of a single image per call).
    """
    decoder = sam.mask_decoder
    point_arg = box_arg = None
    if prompts.points:
        coords = torch.tensor(prompts.points, dtype=torch.float32)[:, None]
        point_arg = (coords, torch.ones(coords.shape[:2], dtype=torch.int))
    if prompts.boxes:
        box_arg = torch.tensor(prompts.boxes, dtype=torch.float32)
    sparse, dense = sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=None)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(len(sparse), -1, -1), sparse), dim=1)
    src = embeddings[torch.tensor(prompts.image)] + dense
    pos_src = sam.prompt_encoder.get_dense_pe().expand(len(sparse), -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    upscaled = decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou = decoder.iou_prediction_head(iou_token_out)
    pick = slice(1, None) if multimask else slice(0, 1)
    return masks[:, pick], iou[:, pick]


def mask_losses(
    logits: Tensor,
    iou_pred: Tensor,
    target: Tensor,
    focal_weight: float,
    dice_weight: float,
    size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per prompt and mask (K, M): focal·w + dice·w, the IoU-head MSE, and the actual IoU.

    ``logits`` (K, M, h, w) are upsampled to ``size``², ``target`` (K, H, W) is area-averaged
    to it (soft at the edges; exact when ``size`` is H): half the image size halves the cost
    of the loss, which on CPU is a third of a step.
    """
    soft = target[:, None].float()
    if soft.shape[-1] != size:
        soft = F.adaptive_avg_pool2d(soft, size)
    logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    t = soft.expand_as(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    focal = (ce * (1 - p_t) ** 2).flatten(2).mean(-1)  # γ = 2, no α: small masks stay small
    inter = (prob * t).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1)
    with torch.no_grad():
        hard = logits > 0
        tb = t >= 0.5
        actual = (hard & tb).flatten(2).sum(-1) / (hard | tb).flatten(2).sum(-1).clamp(min=1)
    mse = (iou_pred - actual) ** 2
    return focal_weight * focal + dice_weight * dice, mse, actual


# --------------------------------------------------------------------------- evaluation


def eval_samples(
    n: int, seed: int, categories: Sequence[str], defect_types: Sequence[str], size: int = 224
) -> list[WorldSample]:
    """Images of ``categories`` with one to three defects each (seeded; for evaluation)."""
    samples = []
    for i in range(n):
        rng = np.random.default_rng([seed, 7919, i])
        kinds = [str(k) for k in rng.choice(defect_types, size=1 + i % 3)]
        samples.append(render(categories[i % len(categories)], rng, (size, size), kinds))
    return samples


def grown_box(mask: np.ndarray, grow: float = 0.05) -> tuple[float, float, float, float]:
    """The mask's box grown by ``grow`` and clipped, as MMR builds its box prompts."""
    height, width = mask.shape
    x0, y0, x1, y1 = bbox(mask)
    gx, gy = grow * (x1 - x0) / 2, grow * (y1 - y0) / 2
    return max(0.0, x0 - gx), max(0.0, y0 - gy), min(width, x1 + gx), min(height, y1 + gy)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluate(
    backbone: SamBackbone, samples: Sequence[WorldSample], swap_xy: bool = False
) -> dict[str, float]:
    """Mean IoU over defect components of the mask ``backbone.decode`` returns for a point
    (the most interior pixel, multimask), a box (grown 5%, as MMR) and point + box; and of
    the box filled in, the trivial answer to a box prompt. ``swap_xy`` passes YX instead of XY
    (a deliberate bug, to show the figures depend on the prompt being right)."""
    scores: dict[str, list[float]] = {"point": [], "box": [], "point_box": [], "box_filled": []}
    for sample in samples:
        if not sample.defects:
            continue
        shape = sample.image.shape[:2]
        embedding = backbone.embed([sample.image])
        points = np.array([[interior_point(m)] for m in sample.defects], dtype=np.float32)
        boxes = np.array([grown_box(m) for m in sample.defects], dtype=np.float32)
        if swap_xy:
            points, boxes = points[..., ::-1].copy(), boxes[:, [1, 0, 3, 2]].copy()
        results = {
            "point": backbone.decode(embedding, shape, points=points, multimask=True),
            "box": backbone.decode(embedding, shape, boxes=boxes),
            "point_box": backbone.decode(embedding, shape, points=points, boxes=boxes),
        }
        for kind, (masks, _iou) in results.items():
            for mask, target in zip(masks.cpu().numpy(), sample.defects, strict=True):
                scores[kind].append(iou(mask, target))
        for box, target in zip(boxes, sample.defects, strict=True):
            filled = np.zeros(shape, dtype=bool)
            x0, y0, x1, y1 = (round(float(v)) for v in box)
            filled[y0:y1, x0:x1] = True
            scores["box_filled"].append(iou(filled, target))
    return {kind: float(np.mean(values)) for kind, values in scores.items()}


def load_backbone(weights: Path | None, seed: int = 0) -> SamBackbone:
    """micro-SAM in the pipeline's :class:`SamBackbone` (fast paths on): loaded through the
    segment-anything-style builder, or (``None``) with weights seeded randomly."""
    if weights is not None:
        return SamBackbone(load_micro_sam(weights), f"micro-sam/{weights.stem}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SamBackbone(build_sam_model(MICRO_SAM_ARCH), f"micro-sam/random-seed{seed}")


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 1700
    minutes: float = 20.0
    pool: int = 600
    batch: int = 4
    max_defects: int = 6
    p_part: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 30
    loss_size: int = 128
    p_shapes: float = 0.5
    max_shapes: int = 5
    #: Curriculum (see :func:`curriculum`): object sizes (px) at the start and at the end of
    #: shrinking, the fraction of training spent shrinking, and when defects become targets.
    big_sizes: tuple[float, float] = (30.0, 120.0)
    small_sizes: tuple[float, float] = (5.0, 60.0)
    prompt_iou: float = 0.3
    objects_until: float = 0.4
    shrink: float = 0.3
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    box_jitter: float = 0.05
    p_interior: float = 0.3
    eval_images: int = 100
    threads: int = 1  # one: deterministic, and fastest on a shared machine; 0 picks free cores
    log_every: int = 50


def pick_threads(requested: int) -> int:
    """``requested`` torch threads, or (0) one per free core: on a loaded machine one thread
    runs these small ops about three times faster than two that wait on each other."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0))
    busy = os.getloadavg()[0]
    return max(1, min(cores, int(cores - busy + 0.5)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def train(cfg: TrainConfig, out: Path) -> dict[str, Any]:
    start = time.monotonic()
    deadline = start + 60.0 * cfg.minutes
    seed_everything(cfg.seed)
    torch.set_num_threads(pick_threads(cfg.threads))
    arch = MICRO_SAM_ARCH
    train_categories, heldout = world.TRAIN_CATEGORIES, world.HELDOUT_CATEGORIES
    defect_types = world.WORLD_DEFECT_TYPES
    logger.info(
        "micro-SAM %s on %d training categories; %d torch threads",
        arch,
        len(train_categories),
        torch.get_num_threads(),
    )
    pool = render_pool(cfg.pool, cfg.seed, arch.img_size, train_categories, defect_types)
    render_s = time.monotonic() - start
    logger.info("rendered %d images in %.0f s", len(pool), render_s)

    sam = build_sam_model(arch).train()
    n_params = sum(p.numel() for p in sam.parameters())
    decay = [p for n, p in sam.named_parameters() if p.ndim > 1 and "rel_pos" not in n]
    no_decay = [p for n, p in sam.named_parameters() if not (p.ndim > 1 and "rel_pos" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.999),
    )

    train_start = time.monotonic()
    train_budget = max(1.0, deadline - train_start)

    def progress(step: int) -> float:
        """How far along the schedule: by steps, or by time when the wall budget binds first
        (then the run is no longer bit-for-bit repeatable; the report says which bound)."""
        return max(step / cfg.steps, (time.monotonic() - train_start) / train_budget)

    def lr_at(step: int, done: float) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))

    rng = np.random.default_rng([cfg.seed, 1])
    schedule = Curriculum(cfg)
    running: dict[str, list[float]] = {"loss": [], "iou": []}
    steps_done = 0
    bound = "steps"
    bar = tqdm(range(cfg.steps), desc="train", unit="step", mininterval=5.0)
    for step in bar:
        done = progress(step)
        if done >= 1.0:
            bound = "time"
            logger.warning("time budget reached after %d of %d steps", step, cfg.steps)
            break
        lr = lr_at(step, done)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stage = schedule.stage(done)
        pixels, groups = make_batch(pool, rng, cfg, arch.img_size, stage)
        embeddings = sam.image_encoder(sam.preprocess(pixels))
        losses, ious = [], []
        sources: list[str] = []
        for kind, prompts in groups.items():
            if not prompts.image:
                continue
            multimask = kind == "point"
            logits, iou_pred = decode_batched(sam, embeddings, prompts, multimask)
            target = torch.from_numpy(np.stack(prompts.target))
            mask_loss, mse, actual = mask_losses(
                logits, iou_pred, target, cfg.focal_weight, cfg.dice_weight, cfg.loss_size
            )
            best = mask_loss.argmin(dim=1)
            rows = torch.arange(len(best))
            losses.append(mask_loss[rows, best] + mse.mean(dim=1))
            ious.append(actual[rows, best])
            sources.extend(prompts.source)
        loss = torch.cat(losses).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        optimizer.step()
        steps_done = step + 1
        running["loss"].append(loss.item())
        step_ious = torch.cat(ious)
        running["iou"].append(float(step_ious.mean()))
        for source in ("defect", "shape", "part"):
            chosen = [i for i, name in enumerate(sources) if name == source]
            running.setdefault(source, []).extend(step_ious[chosen].tolist())
        was_objects = schedule.switched_at is None
        schedule.observe(
            [float(step_ious[i]) for i, name in enumerate(sources) if name == "shape"], done
        )
        if was_objects and schedule.switched_at is not None:
            tqdm.write(f"step {steps_done}: the prompt is followed; the world's targets join")
        if steps_done % cfg.log_every == 0:
            loss_avg = np.mean(running["loss"][-cfg.log_every :])
            iou_avg = np.mean(running["iou"][-cfg.log_every :])
            bar.set_postfix(loss=f"{loss_avg:.3f}", miou=f"{iou_avg:.3f}")
            by_source = "  ".join(
                f"{name} {np.mean(running[name][-200:]):.2f}"
                for name in ("defect", "shape", "part")
                if running.get(name)
            )
            tqdm.write(
                f"step {steps_done}: loss {loss_avg:.4f}  mIoU {iou_avg:.3f} ({by_source})  "
                f"lr {lr:.2e}  {time.monotonic() - start:.0f} s"
            )
    bar.close()
    train_s = time.monotonic() - start - render_s

    sam.eval()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in sam.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(state, str(out))  # first without figures, so the evaluation loads this very file
    samples = eval_samples(cfg.eval_images, cfg.seed, heldout, defect_types)
    trained = evaluate(load_backbone(out, cfg.seed), samples)
    random_weights = evaluate(load_backbone(None, cfg.seed), samples)
    total_s = time.monotonic() - start
    report = {
        "arch": asdict(arch),
        "parameters": n_params,
        "config": asdict(cfg),
        "steps_done": steps_done,
        "bound_by": bound,
        "torch_threads": torch.get_num_threads(),
        "render_s": round(render_s, 1),
        "train_s": round(train_s, 1),
        "total_s": round(total_s, 1),
        "final_train_loss": float(np.mean(running["loss"][-cfg.log_every :])),
        "final_train_miou": float(np.mean(running["iou"][-cfg.log_every :])),
        "train_categories": list(train_categories),
        "heldout_categories": list(heldout),
        "heldout_miou": trained,
        "heldout_miou_random_weights": random_weights,
    }
    metadata = {
        "format": "pt",
        "model": "micro-sam",
        "arch": json.dumps(asdict(arch)),
        "seed": str(cfg.seed),
        "config": json.dumps(asdict(cfg)),
        "heldout_miou_point": f"{trained['point']:.4f}",
        "heldout_miou_box": f"{trained['box']:.4f}",
        "heldout_miou_point_box": f"{trained['point_box']:.4f}",
        "heldout_miou_box_filled": f"{trained['box_filled']:.4f}",
        "heldout_miou_random_weights": json.dumps(random_weights),
        "report": json.dumps(report),
    }
    save_file(state, str(out), metadata=metadata)
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m training.miniature.sam",
        description="Train micro-SAM on the synthetic world (CPU, minutes).",
    )
    parser.add_argument("--out", type=Path, default=MICRO_SAM_WEIGHTS, help="safetensors to write")
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="wall budget")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--pool", type=int, default=defaults.pool, help="images rendered")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="images per step")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--focal-weight", type=float, default=defaults.focal_weight)
    parser.add_argument("--dice-weight", type=float, default=defaults.dice_weight)
    parser.add_argument("--p-shapes", type=float, default=defaults.p_shapes)
    parser.add_argument("--eval-images", type=int, default=defaults.eval_images)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: free cores)")
    args = parser.parse_args(argv)
    configure_logging()
    cfg = TrainConfig(
        seed=args.seed,
        steps=args.steps,
        minutes=args.minutes,
        pool=args.pool,
        batch=args.batch,
        lr=args.lr,
        eval_images=args.eval_images,
        threads=args.threads,
        focal_weight=args.focal_weight,
        dice_weight=args.dice_weight,
        p_shapes=args.p_shapes,
    )
    report = train(cfg, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
