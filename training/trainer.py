"""The UMCI training loop, on cached frozen CLIP features (method spec §5).

CLIP never changes, so each image goes through the backbone once (``prepare_samples``) and every
epoch after that costs only the head. Batches hold one category each, because the text
features T that the head attends to are per category. The published 2×2 mosaic augmentation
needs a backbone forward per mosaic, so it does not apply to cached training and is left out.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from clipsam import metrics
from clipsam.calibration import Thresholds, calibrate_map, f1_max_threshold
from clipsam.heads import AnomalyHead, stage_probabilities
from clipsam.image_score import fuse_image_score
from clipsam.images import image_hash
from clipsam.pipeline import Pipeline
from clipsam.precision import Precision, autocast, autocast_dtype, resolve_device
from training.losses import stage_loss

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Held-out pixels the pixel threshold is chosen on, at most (a uniform sample beyond that).
CALIBRATION_PIXELS = 4_000_000


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings; defaults follow the method spec (Adam 1e-3, β 0.5/0.999)."""

    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    focal_gamma: float = 2.0
    seed: int = 0
    device: str = "auto"
    #: Mixed precision of the forward pass (``clipsam.precision`` rules); None: the pipeline's
    #: setting, so a head trains in the precision it will serve in. Weights and Adam stay fp32.
    precision: Precision | None = None
    progress: bool = True
    #: Early stopping: stop after this many epochs without a lower held-out loss and keep the
    #: best epoch's weights (the starting weights count as epoch 0, so a warm-started head
    #: never ends worse on that loss than it began). None: train every epoch.
    patience: int | None = None
    #: Early stopping never stops before this many epochs (the best epoch is still the one
    #: kept): a fresh head's floor of optimiser steps (``correction_loop.retrain.MIN_STEPS``).
    min_epochs: int = 0
    #: What early stopping watches on the held-out samples: ``auroc``, the pixel AUROC of the
    #: maps the promotion gate judges (the same pass, so judging reuses it; a tie keeps the
    #: earlier epoch; the loss stands in where AUROC is undefined, e.g. no held-out defect), or
    #: ``loss``, the training loss. On 8 held-out images the loss can stay flat while the AUROC
    #: rises (docs/method.md §13).
    stop_on: Literal["auroc", "loss"] = "auroc"


@dataclass
class TrainingSample:
    """Cached CLIP features of one image and its mask squashed to the CLIP input size."""

    features: dict[str, Tensor]
    mask: Tensor  # float (S, S) in {0, 1}
    category: str


@dataclass
class TrainResult:
    head: AnomalyHead
    losses: list[float]  # mean training loss per epoch
    held_out_losses: list[float] = field(default_factory=list)  # per epoch, 0 = the start
    held_out_aurocs: list[float] = field(default_factory=list)  # the same, with stop_on="auroc"
    best_epoch: int | None = None  # the epoch whose weights were kept (early stopping)
    metrics: dict[str, float] = field(default_factory=dict)  # held-out, mean over classes
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    #: The kept head's raw maps on the held-out samples (None without any), for judging it.
    held_out_maps: HeldOutMaps | None = None
    #: The starting head's (``init_head``'s) raw maps on them, where early stopping checked it
    #: on the AUROC: judging the serving head it started from needs no pass of its own.
    start_maps: HeldOutMaps | None = None


@dataclass
class HeldOutMaps:
    """A head's raw coarse maps on held-out samples, per category in the order first seen: one
    forward pass gives every metric and threshold judged on them (the thresholds only move
    values, :func:`clipsam.calibration.calibrate_map`, so the weights' maps are reused)."""

    maps: dict[str, Tensor]  # (B, S, S) float, uncalibrated, on the CPU
    text_scores: dict[str, Tensor]  # (B,) the text part of the image score
    masks: dict[str, Tensor]  # (B, S, S) bool

    def calibrated(self, thresholds: Thresholds | None) -> dict[str, Tensor]:
        """The maps as the pipeline serves them with ``thresholds`` (unchanged for None)."""
        return {c: calibrate_map(m, thresholds) for c, m in self.maps.items()}


def prepare_samples(
    pipeline: Pipeline,
    items: Iterable[tuple[np.ndarray, np.ndarray, str]],
    total: int | None = None,
    progress: bool = True,
) -> list[TrainingSample]:
    """Run (or fetch from cache) CLIP once per ``(image, mask, category)``; squash the masks.

    Items are consumed a batch at a time, so a large dataset never sits in memory as images.
    """
    size = pipeline.clip.config.image_size
    samples: list[TrainingSample] = []
    bar = tqdm(total=total, desc="CLIP features", unit="img", disable=not progress)
    for chunk in _chunked(items, pipeline.config.batch_size):
        images = [image for image, _, _ in chunk]
        features = pipeline.clip_features(images, [image_hash(image) for image in images])
        for feats, (_, mask, category) in zip(features, chunk, strict=True):
            full = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
            squashed = F.interpolate(full, size=(size, size), mode="bilinear")[0, 0]
            samples.append(TrainingSample(feats, (squashed > 0.5).float(), category))
        bar.update(len(chunk))
    bar.close()
    return samples


def split_holdout(
    samples: Sequence[TrainingSample], fraction: float, seed: int = 0
) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """Deterministic train/held-out split, stratified by category and defective-or-good."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, bool], list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault((sample.category, bool(sample.mask.any())), []).append(index)
    held: set[int] = set()
    for indices in groups.values():
        count = math.floor(len(indices) * fraction + 0.5) if fraction > 0 else 0
        held.update(rng.permutation(indices)[:count].tolist())
    train = [s for i, s in enumerate(samples) if i not in held]
    return train, [s for i, s in enumerate(samples) if i in held]


def has_parameters(head: AnomalyHead) -> bool:
    """Whether ``head`` has anything to train (the training-free head has not)."""
    return any(True for _ in head.parameters())


@dataclass
class Improvement:
    """What ``train_head``'s ``on_improved`` is given each time early stopping (on the AUROC)
    sees a new best epoch."""

    pipeline: Pipeline
    training_head: AnomalyHead  # the head being trained: copy it (:meth:`head`) to keep it
    epoch: int
    maps: HeldOutMaps  # its raw maps on the held-out samples
    start_maps: HeldOutMaps | None  # the starting head's (epoch 0)

    def head(self) -> AnomalyHead:
        """A servable copy: eval mode, on the CPU, calibrated on :attr:`maps`."""
        done = copy.deepcopy(self.training_head).eval().requires_grad_(False).cpu()
        done.thresholds = thresholds_from_maps(self.pipeline, self.maps)
        return done


def train_head(
    pipeline: Pipeline,
    train: Sequence[TrainingSample],
    held_out: Sequence[TrainingSample] = (),
    config: TrainConfig | None = None,
    init_head: AnomalyHead | None = None,
    on_improved: Callable[[Improvement], None] | None = None,
) -> TrainResult:
    """Train a head (a copy of ``init_head``, or a fresh one) and score it on ``held_out``.

    ``on_improved``: called with an :class:`Improvement` at each new best epoch (early stopping
    on the AUROC only); the retrain job serves a better head from it before training ends."""
    config = config or TrainConfig()
    if not train:
        raise ValueError("no training samples")
    started = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    head = copy.deepcopy(init_head) if init_head is not None else pipeline.new_head(config.seed)
    head.thresholds = None  # chosen anew below, on this head's own held-out maps
    if not has_parameters(head):
        raise ValueError(f"the {head.kind!r} head has no trainable parameters")
    head = head.to(device).train().requires_grad_(True)
    texts = _text_features(pipeline, {s.category for s in [*train, *held_out]}, device)
    optimiser = torch.optim.Adam(head.parameters(), lr=config.lr, betas=config.betas)
    generator = torch.Generator().manual_seed(config.seed)
    size = pipeline.clip.config.image_size
    losses: list[float] = []
    epochs = tqdm(range(config.epochs), desc="training", unit="epoch", disable=not config.progress)
    dtype = autocast_dtype(config.precision or pipeline.config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)  # fp16 underflows
    stopper = _EarlyStop(pipeline, config, held_out, texts, device)
    stopper.see(head, 0)
    for epoch in epochs:
        total, count = 0.0, 0
        for batch in _batches(train, config.batch_size, generator):
            features = _stack_features(batch, device)
            target = _to(torch.stack([s.mask for s in batch]), device)
            with autocast(device, dtype):
                logits = head(features, texts[batch[0].category])
            probabilities = stage_probabilities(logits.float(), size)
            loss = stage_loss(probabilities, target, config.focal_gamma)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            total, count = total + loss.item() * len(batch), count + len(batch)
        losses.append(total / count)
        epochs.set_postfix(loss=f"{losses[-1]:.4f}")
        stop = stopper.see(head, epoch + 1)
        if on_improved and stopper.best_epoch == epoch + 1 and stopper.best_maps is not None:
            on_improved(Improvement(pipeline, head, epoch + 1, stopper.best_maps,
                                    stopper.start_maps))  # fmt: skip
        if stop:
            logger.info("early stop after epoch %d: best held-out %s at epoch %d",
                        epoch + 1, config.stop_on, stopper.best_epoch)  # fmt: skip
            break
    stopper.restore(head)
    head = head.eval().requires_grad_(False).cpu()
    result = TrainResult(head=head, losses=losses, held_out_losses=stopper.losses,
                         held_out_aurocs=stopper.aurocs, start_maps=stopper.start_maps,
                         best_epoch=stopper.best_epoch if stopper.active else None)  # fmt: skip
    if held_out:  # one pass over the held-out samples (none when early stopping made it)
        result.held_out_maps = stopper.best_maps or held_out_maps(pipeline, head, held_out)
        result.per_class = evaluate_maps(result.held_out_maps)
        result.metrics = result.per_class["mean"]
        head.thresholds = thresholds_from_maps(pipeline, result.held_out_maps)
    result.seconds = time.perf_counter() - started
    logger.info(
        "trained %s head: %d samples, %d epochs, %.1f s, final loss %.4f, held-out %s",
        head.kind, len(train), len(losses), result.seconds, losses[-1], result.metrics,
    )  # fmt: skip
    return result


class _EarlyStop:
    """Held-out score after each epoch; the best weights so far; whether to stop.

    On the AUROC, each check is :func:`held_out_maps`, the pass judging and calibration use, so
    the start's and the best epoch's maps are kept for them (two passes fewer per retrain)."""

    def __init__(
        self,
        pipeline: Pipeline,
        config: TrainConfig,
        held_out: Sequence[TrainingSample],
        texts: dict,
        device: torch.device,
    ) -> None:
        self.pipeline, self.held_out, self.texts, self.device = pipeline, held_out, texts, device
        self.active = config.patience is not None and bool(held_out)
        self.patience = config.patience or 0
        self.min_epochs = config.min_epochs
        self.gamma = config.focal_gamma
        self.size = pipeline.clip.config.image_size
        defects = sum(int(s.mask.any()) for s in held_out)
        pixels_of_both = any(not s.mask.all() for s in held_out)
        #: AUROC needs defect and normal pixels; without them the loss stands in, quietly.
        self.on_maps = config.stop_on == "auroc" and defects > 0 and pixels_of_both
        self.losses: list[float] = []
        self.aurocs: list[float] = []
        self.best_rank = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, Tensor] | None = None
        self.start_maps: HeldOutMaps | None = None
        self.best_maps: HeldOutMaps | None = None

    def see(self, head: AnomalyHead, epoch: int) -> bool:
        """Record ``head`` after ``epoch``; True when it is time to stop."""
        if not self.active:
            return False
        maps = None
        if self.on_maps:
            maps = self._maps(head)
            rank = metrics.pixel_auroc(
                torch.cat(list(maps.maps.values())).numpy(),
                torch.cat(list(maps.masks.values())).numpy(),
            )
            self.aurocs.append(rank)
            if epoch == 0:
                self.start_maps = maps
        else:
            self.losses.append(self._loss(head))
            rank = -self.losses[-1]
        if self.best_state is None or rank > self.best_rank:  # a tie keeps the earlier epoch
            self.best_rank, self.best_epoch, self.best_maps = rank, epoch, maps
            self.best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        return epoch >= self.min_epochs and epoch - self.best_epoch >= self.patience

    def restore(self, head: AnomalyHead) -> None:
        if self.active and self.best_state is not None:
            head.load_state_dict(self.best_state)

    def _maps(self, head: AnomalyHead) -> HeldOutMaps:
        """:func:`held_out_maps` of the training head, which stays where it trains."""
        same = self.device == self.pipeline.device
        maps = held_out_maps(self.pipeline, head if same else copy.deepcopy(head), self.held_out)
        head.train()
        return maps

    @torch.no_grad()
    def _loss(self, head: AnomalyHead) -> float:
        """Mean training loss on the held-out samples."""
        head.eval()
        total = 0.0
        for category, group in _by_category(self.held_out).items():
            for start in range(0, len(group), 8):
                batch = group[start : start + 8]
                logits = head(_stack_features(batch, self.device), self.texts[category])
                target = _to(torch.stack([s.mask for s in batch]), self.device)
                probabilities = stage_probabilities(logits.float(), self.size)
                total += stage_loss(probabilities, target, self.gamma).item() * len(batch)
        head.train()
        return total / len(self.held_out)


@torch.inference_mode()
def held_out_maps(
    pipeline: Pipeline, head: AnomalyHead, samples: Sequence[TrainingSample]
) -> HeldOutMaps:
    """The raw coarse maps (at the CLIP input size) and text scores of ``head`` on ``samples``."""
    head = head.to(pipeline.device).eval()
    held = HeldOutMaps({}, {}, {})
    for category, group in _by_category(samples).items():
        text = pipeline.text_features(category).to(pipeline.device)
        maps, scores = [], []
        for start in range(0, len(group), pipeline.config.batch_size):
            chunk = group[start : start + pipeline.config.batch_size]
            amaps, text_scores = pipeline.score_features(
                [s.features for s in chunk], head, text, calibrated=False
            )
            assert text_scores is not None
            maps.append(amaps.float().cpu())
            scores.append(text_scores.float().cpu())
        held.maps[category], held.text_scores[category] = torch.cat(maps), torch.cat(scores)
        held.masks[category] = torch.stack([s.mask for s in group]).bool()
    return held


def evaluate_head(
    pipeline: Pipeline, head: AnomalyHead, samples: Sequence[TrainingSample]
) -> dict[str, dict[str, float]]:
    """All eight metrics per class on coarse maps at the CLIP input size, plus their mean."""
    return evaluate_maps(held_out_maps(pipeline, head, samples), head.thresholds)


def evaluate_maps(
    held: HeldOutMaps, thresholds: Thresholds | None = None
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_head` on maps already computed, as served with ``thresholds``."""
    # (maps, masks, scores, labels): labels None, so clipsam.metrics reads them off the masks.
    per_class: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, None]] = {}
    for category, maps in held.calibrated(thresholds).items():
        scores = maps.flatten(1).max(dim=1).values
        per_class[category] = (maps.numpy(), held.masks[category].numpy(), scores.numpy(), None)
    return metrics.evaluate_per_class(per_class)


def calibrate_head(
    pipeline: Pipeline, head: AnomalyHead, samples: Sequence[TrainingSample]
) -> Thresholds | None:
    """The head's operating points on held-out ``samples`` (``clipsam.calibration``).

    Pixel threshold: F1-max over the held-out pixels of the raw coarse maps (at the CLIP input
    size, pooled over images and categories). Image threshold: F1-max over the image scores the
    pipeline would give with that pixel threshold applied (text score fused with the map's
    maximum; without SAM, which the held-out samples have no images for). None when the
    held-out data has one kind of label only.
    """
    return thresholds_from_maps(pipeline, held_out_maps(pipeline, head, samples))


def thresholds_from_maps(pipeline: Pipeline, held: HeldOutMaps) -> Thresholds | None:
    """:func:`calibrate_head` on maps already computed."""
    all_maps = torch.cat(list(held.maps.values()))
    all_masks = torch.cat(list(held.masks.values()))
    pixel = f1_max_threshold(*_pixel_subsample(all_maps.numpy(), all_masks.numpy()))
    normalised = calibrate_map(all_maps, Thresholds(pixel=pixel))
    weight = pipeline.config.image_score_weight
    peaks = normalised.flatten(1).max(dim=1).values.tolist()
    image_scores = [
        fuse_image_score(s, peak, weight)
        for s, peak in zip(torch.cat(list(held.text_scores.values())).tolist(), peaks, strict=True)
    ]
    labels = all_masks.flatten(1).any(dim=1).numpy()
    image = f1_max_threshold(image_scores, labels)
    if pixel is None and image is None:
        return None
    source = (
        f"F1-max on {len(all_maps)} held-out images ({int(labels.sum())} defective), "
        f"coarse maps at {all_maps.shape[-1]} px, no SAM"
    )
    thresholds = Thresholds(pixel, image, source)
    logger.info("calibrated head: %s", thresholds)
    return thresholds


def _pixel_subsample(
    maps: np.ndarray, masks: np.ndarray, limit: int = CALIBRATION_PIXELS
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` pixels, drawn uniformly (seeded), so the F1-max sort stays cheap."""
    scores, labels = maps.ravel(), masks.ravel()
    if scores.size <= limit:
        return scores, labels
    keep = np.random.default_rng(0).choice(scores.size, size=limit, replace=False)
    return scores[keep], labels[keep]


def _text_features(pipeline: Pipeline, categories: set[str], device: torch.device) -> dict:
    """The categories' text features as ordinary tensors: the pipeline's cache may hold them as
    inference tensors (first computed under ``inference_mode``), which autograd cannot save."""
    return {c: pipeline.text_features(c).to(device).float().clone() for c in categories}


def _stack_features(batch: Sequence[TrainingSample], device: torch.device) -> dict[str, Tensor]:
    names = batch[0].features.keys()
    return {n: _to(torch.stack([s.features[n] for s in batch]), device).float() for n in names}


def _to(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``; a CPU tensor bound for a GPU goes through pinned memory, so the
    copy is asynchronous (cached features live on the CPU; the head trains on the GPU)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _by_category(samples: Sequence[TrainingSample]) -> dict[str, list[TrainingSample]]:
    groups: dict[str, list[TrainingSample]] = {}
    for sample in samples:
        groups.setdefault(sample.category, []).append(sample)
    return groups


def _batches(
    samples: Sequence[TrainingSample], size: int, generator: torch.Generator
) -> list[list[TrainingSample]]:
    """Shuffled single-category batches, in shuffled order."""
    batches = []
    for group in _by_category(samples).values():
        order = torch.randperm(len(group), generator=generator).tolist()
        batches += [[group[i] for i in order[s : s + size]] for s in range(0, len(order), size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def _chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
