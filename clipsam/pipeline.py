"""The ClipSAM pipeline: images → CLIP features (cached) → head → coarse map → MMR → prediction.

The pipeline owns the frozen backbones, the feature cache and the current head. Swapping the
head (``set_head``) is one attribute assignment, and each ``predict`` call reads the head once,
so a concurrent swap never mixes two heads inside one call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clipsam.cache import FeatureCache
from clipsam.calibration import calibrate_map, calibrate_score, zero_shot_thresholds
from clipsam.clip_backbone import ClipBackbone, build_clip
from clipsam.config import HeadKind, PipelineConfig, config_to_dict, resolve_config
from clipsam.defect_types import (
    RegionDescriptor,
    TypeClassifier,
    describe_region,
    type_sentences,
    zero_shot_probs,
)
from clipsam.fewshot import MemoryBank, NormalMemory, blend, fewshot_map
from clipsam.heads import AnomalyHead, HeadMismatchError, build_head, coarse_map, load_head
from clipsam.heads.base import stage_logits
from clipsam.image_score import clip_scores, fuse_image_score, hsf_scores
from clipsam.images import ImageInput, image_hash, load_image
from clipsam.precision import autocast, autocast_dtype, resolve_device
from clipsam.prompts import category_phrase
from clipsam.refine import Component, find_components, refine
from clipsam.sam_backbone import SamBackbone, build_sam
from clipsam.weights import WeightPaths, resolve_weights

logger = logging.getLogger(__name__)


@dataclass
class Region:
    """One predicted defect: ``bbox`` is XYXY in pixels (x1, y1 exclusive)."""

    mask: np.ndarray  # bool (H, W)
    bbox: tuple[int, int, int, int]
    score: float  # mean of the final map inside the region
    #: Its defect type, when asked for (``Pipeline.type_regions``), and every type's probability.
    label: str = ""
    label_probs: dict[str, float] = field(default_factory=dict)


@dataclass
class Prediction:
    """Everything predicted for one image, at the image's own size (H, W)."""

    anomaly_map: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # bool (H, W): union of the regions
    regions: list[Region]
    score: float  # image-level anomaly score in [0, 1] (0.5 = the head's own threshold, if any)
    clip_score: float = 0.0  # the text part of the score: CLIP's global (or HSF) probability
    sam_used: bool = False
    head_version: str = ""


@dataclass
class Segment:
    """An interactive mask: SAM's answer to one prompt set (``Pipeline.segment``)."""

    mask: np.ndarray  # bool (H, W)
    iou: float  # SAM's own estimate of the mask's IoU
    embedded: bool  # True when this call computed the image embedding (it was not cached)


class SamUnavailable(RuntimeError):
    """The pipeline was built without SAM, so prompts cannot be decoded."""


@dataclass
class _Stats:
    clip_forwards: int = 0
    sam_forwards: int = 0
    images: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Pipeline:
    def __init__(
        self,
        config: PipelineConfig,
        clip: ClipBackbone,
        sam: SamBackbone | None,
        head: AnomalyHead,
        cache: FeatureCache,
        device: torch.device,
    ) -> None:
        self.config = config
        self.clip = clip
        self.sam = sam
        self.cache = cache
        self.device = device
        self.stats = _Stats()
        self._head = head
        self.set_head(head)  # validates the backbone and moves it to the device
        #: Normal memories by category (``clipsam.fewshot``): blended into the map at once.
        self.memories = MemoryBank(clip.backbone_id)
        self._type_text: dict[tuple[tuple[str, ...], str], Tensor] = {}

    # ---- head management -------------------------------------------------------------
    @property
    def head(self) -> AnomalyHead:
        return self._head

    def set_head(self, head: AnomalyHead) -> None:
        """Serve ``head`` from the next ``predict`` on; refuses heads for another backbone."""
        if head.backbone_id != self.clip.backbone_id:
            raise HeadMismatchError(
                f"head {head.version!r} was built for {head.backbone_id!r}, "
                f"this pipeline runs {self.clip.backbone_id!r}"
            )
        self._head = head.to(self.device).eval().requires_grad_(False)

    def load_head(self, path: str | Path) -> AnomalyHead:
        head = load_head(path, self.clip.backbone_id)
        self.set_head(head)
        logger.info("serving head %s from %s", head.version, path)
        return head

    def new_head(self, seed: int | None = None, kind: HeadKind | None = None) -> AnomalyHead:
        """A freshly initialised head (seeded) of ``kind`` or the configured kind, e.g. to train."""
        config = self.config
        if kind is not None:
            config = dataclasses.replace(config, head=dataclasses.replace(config.head, head=kind))
        return fresh_head(config, self.clip, self.config.seed if seed is None else seed)

    def info(self) -> dict[str, Any]:
        """What is running: preset, backbones, where weights came from, head, device."""
        return {
            "preset": self.config.preset,
            "weights": self.config.weights,
            "random_weights": self.config.weights == "random",
            "clip_backbone": self.clip.backbone_id,
            "sam_backbone": self.sam.backbone_id if self.sam else None,
            "head": self._head.kind,
            "head_version": self._head.version,
            "device": str(self.device),
            "precision": str(self.clip.autocast_dtype or torch.float32).removeprefix("torch."),
            "config": config_to_dict(self.config),
        }

    # ---- frozen features (cached) ----------------------------------------------------
    def features_namespace(self, backbone: ClipBackbone | SamBackbone) -> str:
        """The feature cache's namespace for one of this pipeline's encoders: its backbone and
        the numerics it runs in, so a disk cache shared by pipelines in fp32, bf16 or int8 never
        hands one of them another's features (fp32 keeps the bare backbone id)."""
        numerics = []
        if backbone.autocast_dtype is not None:
            numerics.append(str(backbone.autocast_dtype).removeprefix("torch."))
        if self.config.quantize != "none":
            numerics.append(self.config.quantize)
        return "/".join([backbone.backbone_id, *numerics])

    def clip_features(self, images: Sequence[np.ndarray], hashes: Sequence[str]) -> list[dict]:
        """CLIP features per image, from the cache or one batched backbone forward."""
        namespace = self.features_namespace(self.clip)
        found = [self.cache.get(namespace, h) for h in hashes]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            out = self.clip.encode_images(self.clip.preprocess([images[i] for i in missing]))
            self.stats.clip_forwards += 1
            dtype = getattr(torch, self.config.cache_dtype)
            for row, i in enumerate(missing):
                entry = {name: t[row].to(dtype) for name, t in out.items()}
                found[i] = self.cache.put(namespace, hashes[i], entry)
        return [entry for entry in found if entry is not None]

    def sam_embeddings(self, images: Sequence[np.ndarray], hashes: Sequence[str]) -> list[Tensor]:
        """SAM image embeddings per image, from the cache or one batched encoder forward."""
        assert self.sam is not None
        namespace = self.features_namespace(self.sam)
        found = [self.cache.get(namespace, h) for h in hashes]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            embeddings = self.sam.embed([images[i] for i in missing])
            self.stats.sam_forwards += 1
            dtype = getattr(torch, self.config.cache_dtype)
            for row, i in enumerate(missing):
                entry = {"embedding": embeddings[row].to(dtype)}
                found[i] = self.cache.put(namespace, hashes[i], entry)
        return [entry["embedding"][None] for entry in found if entry is not None]

    def sam_embedding_cached(self, image: np.ndarray) -> bool:
        """Whether ``image``'s SAM embedding is in the cache (memory or disk): a click on it
        decodes only, without running the encoder."""
        return (
            self.sam is not None
            and self.cache.get(self.features_namespace(self.sam), image_hash(image)) is not None
        )

    def segment(
        self,
        image: np.ndarray,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
    ) -> Segment:
        """One mask for one interactive prompt set, decoded from the cached SAM embedding.

        ``points`` (P, 2) XY pixels with ``point_labels`` (P,) 1/0 (positive/negative), ``box``
        (4,) XYXY pixels. An uncached image is embedded once and kept (a pre-annotated one
        usually is cached already). As SAM's own predictor advises, a lone point is ambiguous:
        SAM's three masks are decoded and the best predicted IoU kept; otherwise one mask.
        """
        if self.sam is None:
            raise SamUnavailable("this pipeline runs without SAM (use_sam is off)")
        if points is None and box is None:
            raise ValueError("segment needs at least one point or a box")
        forwards = self.stats.sam_forwards
        [embedding] = self.sam_embeddings([image], [image_hash(image)])
        multimask = box is None and points is not None and len(points) == 1
        masks, iou = self.sam.decode(
            embedding,
            image.shape[:2],
            points=None if points is None else np.asarray(points, np.float32)[None],
            boxes=None if box is None else np.asarray(box, np.float32)[None],
            multimask=multimask,
            point_labels=None if point_labels is None else np.asarray(point_labels)[None],
        )
        return Segment(
            masks[0].cpu().numpy(), float(iou[0]), embedded=self.stats.sam_forwards > forwards
        )

    # ---- defect types ----------------------------------------------------------------
    def type_regions(
        self,
        images: Sequence[np.ndarray],
        predictions: Sequence[Prediction],
        labels: Sequence[str],
        category: str | None = None,
    ) -> None:
        """Give every region of ``predictions`` its most likely label among ``labels``.

        The serving head's :class:`~clipsam.defect_types.TypeClassifier` decides when it knows
        at least two of the labels; otherwise CLIP zero-shot, against prompts built from the
        label names and ``category``. Reads the cached CLIP features: no backbone runs again.
        """
        labels = list(dict.fromkeys(labels))
        todo = [i for i, p in enumerate(predictions) if p.regions]
        if not labels or not todo:
            return
        classifier = self._head.type_classifier
        features = self.clip_features([images[i] for i in todo],
                                      [image_hash(images[i]) for i in todo])  # fmt: skip
        for index, entry in zip(todo, features, strict=True):
            regions = predictions[index].regions
            described = [describe_region(r.mask, entry["vv"], self.clip.grid) for r in regions]
            probs = self.type_probs(described, labels, category, classifier)
            for region, row in zip(regions, probs, strict=True):
                region.label = labels[int(np.argmax(row))]
                region.label_probs = {label: float(p) for label, p in zip(labels, row, strict=True)}

    def type_probs(
        self,
        regions: Sequence[RegionDescriptor],
        labels: Sequence[str],
        category: str | None,
        classifier: TypeClassifier | None,
    ) -> np.ndarray:
        """(R, L) type probabilities: ``classifier``'s when it knows two of ``labels``, else
        CLIP zero-shot."""
        if classifier is not None and classifier.covers(labels):
            return classifier.probs(regions, labels)
        embeddings = np.stack([r.embedding for r in regions])
        return zero_shot_probs(embeddings, self.type_text_features(labels, category))

    def type_text_features(self, labels: Sequence[str], category: str | None) -> Tensor:
        """(L, E) text features of each label's prompt ensemble, computed once per process."""
        key = (tuple(labels), category_phrase(category))
        if key not in self._type_text:
            rows = [self.clip.encode_text(type_sentences(label, category)).mean(0)
                    for label in labels]  # fmt: skip
            self._type_text[key] = F.normalize(torch.stack(rows), dim=-1).cpu()
        return self._type_text[key]

    # ---- prediction ------------------------------------------------------------------
    def predict(
        self,
        images: Sequence[ImageInput] | ImageInput,
        category: str | None = None,
        defect_words: Sequence[str] = (),
    ) -> list[Prediction]:
        """Predict every image (RGB arrays, PIL images, paths or bytes), batched."""
        batch: Sequence[ImageInput] = (
            images if isinstance(images, (list, tuple)) else [images]  # type: ignore[list-item]
        )
        arrays = [load_image(image) for image in batch]
        head = self._head  # read once: a concurrent swap never mixes heads within a call
        text = self.text_features(category, defect_words)
        memory = self.memories.get(category)  # read once too
        predictions: list[Prediction] = []
        for chunk in _chunks(arrays, self.config.batch_size):
            predictions += self._predict_chunk(chunk, head, text, memory)
        self.stats.images += len(arrays)
        return predictions

    def text_features(self, category: str | None, defect_words: Sequence[str] = ()) -> Tensor:
        """The (2, E) text features of a category, cached in this process and the disk cache."""
        return self.clip.text_features(category, defect_words, store=self.cache).to(self.device)

    def coarse_maps(
        self, features: list[dict], head: AnomalyHead, text: Tensor, calibrated: bool = True
    ) -> Tensor:
        """A (B, S, S) at the CLIP input size, from cached features; ``calibrated``: with the
        head's pixel threshold moved to 0.5 (``clipsam.calibration``), if it has one."""
        return self.score_features(features, head, text, calibrated, image_scores=False)[0]

    def score_features(
        self,
        features: list[dict],
        head: AnomalyHead,
        text: Tensor,
        calibrated: bool = True,
        image_scores: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Coarse maps A (B, S, S) and the text part s (B,) of the image score (``image_score``:
        ``clip_max`` or ``hsf``), before it is fused with the final map's maximum."""
        batch = {
            name: torch.stack([f[name] for f in features]).to(self.device) for name in features[0]
        }
        hsf = image_scores and self.config.image_score == "hsf"
        with torch.inference_mode(), autocast(self.device, self.clip.autocast_dtype):
            tokens = head.stage_tokens(batch, text) if hsf else None
            logits = (
                stage_logits(tokens, text, head.logit_scale, head.grid)
                if tokens is not None
                else head(batch, text)
            )
        maps = coarse_map(logits.float(), self.clip.config.image_size)
        if calibrated:
            maps = calibrate_map(maps, head.thresholds)
        if not image_scores:
            return maps, None
        global_embeds = batch["global"].float()
        if tokens is not None:
            return maps, hsf_scores(tokens.float(), logits.float(), global_embeds, text)
        return maps, clip_scores(global_embeds, text)

    def blend_memory(self, maps: Tensor, features: list[dict], memory: NormalMemory) -> Tensor:
        """Calibrated maps (B, S, S) blended with a category's normal memory (few-shot)."""
        stages = torch.stack([f["stages"] for f in features]).to(self.device)
        with torch.inference_mode():
            return blend(maps, fewshot_map(stages, memory, self.clip.config.image_size))

    def _predict_chunk(
        self,
        images: list[np.ndarray],
        head: AnomalyHead,
        text: Tensor,
        memory: NormalMemory | None = None,
    ) -> list[Prediction]:
        hashes = [image_hash(image) for image in images]
        features = self.clip_features(images, hashes)
        maps, text_scores = self.score_features(features, head, text)
        if memory is not None:
            maps = self.blend_memory(maps, features, memory)
        assert text_scores is not None
        amaps = [resize_map(maps[i], image.shape[:2]) for i, image in enumerate(images)]
        components = [find_components(amap, self.config.mmr) for amap in amaps]
        use_sam = self.sam is not None and self.config.mmr.use_sam
        to_refine = [i for i, comps in enumerate(components) if comps and use_sam]
        embeddings: dict[int, Tensor] = {}
        if to_refine:
            found = self.sam_embeddings(
                [images[i] for i in to_refine], [hashes[i] for i in to_refine]
            )
            embeddings = dict(zip(to_refine, found, strict=True))
        return [
            self._assemble(amaps[i], components[i], embeddings.get(i), float(text_scores[i]), head)
            for i in range(len(images))
        ]

    def _assemble(
        self,
        amap: np.ndarray,
        components: list[Component],
        embedding: Tensor | None,
        clip_score: float,
        head: AnomalyHead,
    ) -> Prediction:
        mmr = self.config.mmr
        final, region_masks = amap, [c.mask for c in components]
        if embedding is not None and self.sam is not None:
            refinement = refine(amap, components, embedding, self.sam, mmr)
            final = refinement.final_map
            above = final > mmr.tau
            region_masks = [
                above & (c.mask | sam_mask)
                for c, sam_mask in zip(components, refinement.sam_masks, strict=True)
            ]
        regions = [_region(m, final) for m in region_masks if m.any()]
        mask = np.zeros(amap.shape, dtype=bool)
        for region in regions:
            mask |= region.mask
        score = fuse_image_score(clip_score, float(final.max()), self.config.image_score_weight)
        return Prediction(
            anomaly_map=final.astype(np.float32, copy=False),
            mask=mask,
            regions=regions,
            score=calibrate_score(score, head.thresholds),
            clip_score=clip_score,
            sam_used=embedding is not None,
            head_version=head.version,
        )


def load_pipeline(
    preset: str | PipelineConfig = "paper",
    *,
    weight_paths: WeightPaths | None = None,
    **overrides: Any,
) -> Pipeline:
    """Build a pipeline from a preset (``paper``, ``fast``, ``tiny``) and config overrides.

    ``weight_paths`` says where the weights are (:class:`~clipsam.weights.WeightPaths`: the
    cache folder, explicit CLIP and SAM checkpoints, a head file, offline or not). The command
    lines and the backend read it from the environment once, at start-up
    (``WeightPaths.from_env()``: ``CLIPSAM_HOME``, ``CLIPSAM_CLIP_WEIGHTS``,
    ``CLIPSAM_SAM_CHECKPOINT``, ``CLIPSAM_HEAD``, ``CLIPSAM_OFFLINE``) and pass it in; given
    one, this function reads no environment variable. ``None`` reads them here, for callers
    that do not pass paths yet. A ``head_path`` override wins over ``weight_paths.head``.
    Without a head file, and unless a head kind is asked for explicitly, the training-free head
    serves until a head is trained.
    """
    config = resolve_config(preset, **overrides)
    paths = WeightPaths.from_env() if weight_paths is None else weight_paths
    if config.head_path is None and paths.head is not None:
        config = dataclasses.replace(config, head_path=str(paths.head))
    if config.head_path is None and "head" not in overrides:
        config = dataclasses.replace(config, head=dataclasses.replace(config.head, head="none"))
    device = resolve_device(config.device)
    clip_weights, sam_weights = resolve_weights(config, paths)
    clip = build_clip(config.clip, clip_weights, config.seed)
    sam = (
        build_sam(config.sam, sam_weights, config.seed, config.fast_attention)
        if config.mmr.use_sam
        else None
    )
    clip.to(device)
    clip.autocast_dtype = autocast_dtype(config.precision, device)
    if sam is not None:
        sam.sam.to(device)
        sam.set_precision(clip.autocast_dtype)
    if config.quantize == "int8":
        quantize_encoders(config, clip, sam, device)
    elif clip.autocast_dtype is not None:  # bit-identical under the autocast; see the helper
        clip.hold_weights_in(clip.autocast_dtype)
        if sam is not None:
            sam.hold_encoder_weights_in(clip.autocast_dtype)
    head = (
        load_head(config.head_path, clip.backbone_id)
        if config.head_path is not None
        else fresh_head(config, clip, config.seed)
    )
    cache = FeatureCache(
        config.cache_items, config.cache_dir, max_disk_bytes=int(config.cache_disk_gb * 2**30)
    )
    pipeline = Pipeline(config, clip, sam, head, cache, device)
    if config.weights == "random":
        logger.warning(
            "pipeline %r runs RANDOM backbone weights (seed %d)", config.preset, config.seed
        )
    logger.info("pipeline ready: %s", {k: v for k, v in pipeline.info().items() if k != "config"})
    return pipeline


def quantize_encoders(
    config: PipelineConfig, clip: ClipBackbone, sam: SamBackbone | None, device: torch.device
) -> None:
    """``quantize="int8"``: int8 linear layers in CLIP's visual tower and SAM's image encoder,
    whose other ops then run in fp32 (int8 kernels take fp32 inputs, not autocast's bf16)."""
    from clipsam.quantize import quantize_clip_visual, quantize_sam_encoder

    if device.type != "cpu":
        raise ValueError(f"quantize='int8' runs on the CPU only, not on {device}")
    if config.precision not in ("auto", "fp32"):
        raise ValueError(
            f"quantize='int8' runs the encoders in fp32 around the int8 layers; "
            f"precision {config.precision!r} cannot apply (use 'auto' or 'fp32')"
        )
    clip.autocast_dtype = None
    count = quantize_clip_visual(clip.visual)
    if sam is not None:
        sam.set_precision(None)
        count += quantize_sam_encoder(sam.sam.image_encoder)
    logger.info("int8 dynamic quantisation: %d linear layers of the frozen encoders", count)


def fresh_head(config: PipelineConfig, clip: ClipBackbone, seed: int) -> AnomalyHead:
    """A new head of ``config.head`` kind for ``clip``, initialised from ``seed``; the
    training-free head comes with the thresholds shipped for this backbone, if any
    (:func:`clipsam.calibration.zero_shot_thresholds`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = build_head(
            config.head,
            clip.backbone_id,
            in_dim=clip.width,
            dim=clip.embed_dim,
            stages=len(clip.config.layers),
            grid=clip.grid,
        )
    if head.kind == "none":
        head.thresholds = zero_shot_thresholds(clip.backbone_id)
    return head


def resize_map(amap: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A (S, S) map → (H, W) float32 numpy in [0, 1], bilinear (method spec §3.1)."""
    height, width = int(shape[0]), int(shape[1])
    resized = F.interpolate(amap[None, None].float(), size=(height, width), mode="bilinear")
    return resized[0, 0].clamp_(0.0, 1.0).cpu().numpy()


def _region(mask: np.ndarray, final: np.ndarray) -> Region:
    ys, xs = np.nonzero(mask)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Region(mask=mask, bbox=bbox, score=float(final[mask].mean()))


def _chunks(items: list[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]
