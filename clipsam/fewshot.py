"""Few-shot normal memory: CLIP patch tokens of good images, blended into the map at once.

APRIL-GAN's few-shot mode (docs/method.md §10): per tapped stage, the distance of each query
patch to a memory of normal patches is min over the memory of (1 − cosine); the per-stage maps
are upsampled like the zero-shot map and combined over stages. Two deliberate differences,
because our maps are calibrated so that 0.5 is the pixel threshold (``clipsam.calibration``):

* the stage maps are averaged (not summed) and the result is normalised so that the memory's
  own *normal* distance sits at 0.5: the :data:`NORMAL_QUANTILE` quantile of the distances of
  the memory's patches to the rest of the memory, leaving out each patch's own neighbourhood
  (:data:`EXCLUDE_RADIUS` patches) in its own image. No defect label is needed for that.
* the blend is the *mean* of the calibrated zero-shot map and that map (APRIL-GAN's sum,
  renormalised): a pixel at 0.5 in both stays at 0.5; a pixel the memory has seen many times
  is pulled down, so the threshold keeps its meaning.

The memory is bounded: at most ``max_images`` references (the last ones given: the caller
orders them oldest first) and ``max_patches`` patches, chosen by a deterministic greedy
coreset (PatchCore's k-center on a fixed random projection), the same patches for every stage.
It is tied to the backbone it was computed on: another backbone's memory is refused.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from clipsam.atomic import atomic_path
from clipsam.calibration import normalize_scores

#: Caps: patches per stage (after the coreset) and reference images.
DEFAULT_MAX_PATCHES = 4096
DEFAULT_MAX_IMAGES = 32
#: The quantile of the memory's own normal distances that the map sends to 0.5.
NORMAL_QUANTILE = 0.999
#: A memory patch's neighbours (Chebyshev distance on the grid) in its own image are left out
#: when its normal distance is measured: otherwise a patch's neighbour always matches it.
EXCLUDE_RADIUS = 2
#: Dimensions of the random projection the coreset runs on; memory patches sampled for the
#: normal-distance quantile.
_PROJECTION_DIM = 128
_THRESHOLD_SAMPLES = 2048
_FORMAT = "clipsam-normal-memory/1"


class MemoryMismatchError(ValueError):
    """A memory computed on another backbone, or a file that is not a memory."""


@dataclass(frozen=True, eq=False)
class NormalMemory:
    """The normal patches of one category: ``tokens`` (S, M, C), L2-normalised per stage."""

    backbone_id: str
    category: str
    tokens: Tensor
    #: The normal distance that the few-shot map sends to 0.5.
    threshold: float
    #: The references (e.g. annotation ids) it was built from, in order.
    sources: tuple[str, ...]
    grid: int

    @property
    def patches(self) -> int:
        return int(self.tokens.shape[1])

    def to(self, device: torch.device | str) -> NormalMemory:
        return replace(self, tokens=self.tokens.to(device))


def category_key(category: str | None) -> str:
    """Memories are per category; no category (the generic prompt) is its own one."""
    return category or ""


def build_memory(
    backbone_id: str,
    category: str | None,
    references: Sequence[tuple[str, Tensor]],
    max_patches: int = DEFAULT_MAX_PATCHES,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> NormalMemory:
    """A memory from ``references``: (key, stage tokens (S, N², C)) of good images, oldest
    first; only the last ``max_images`` count, and at most ``max_patches`` patches are kept."""
    if not references:
        raise ValueError("a normal memory needs at least one reference image")
    if max_patches < 1 or max_images < 1:
        raise ValueError("max_patches and max_images must be at least 1")
    kept = list(references)[-max_images:]
    stages = [tokens.float().cpu() for _, tokens in kept]
    shape = stages[0].shape
    if any(t.shape != shape for t in stages) or len(shape) != 3:
        raise ValueError(f"references must all be (S, N², C) of one shape, got {shape} and others")
    grid = math.isqrt(shape[1])
    if grid * grid != shape[1]:
        raise ValueError(f"{shape[1]} patches is not a square grid")
    tokens = F.normalize(torch.cat(stages, dim=1), dim=-1)  # (S, k·N², C)
    image = torch.arange(len(kept)).repeat_interleave(shape[1])
    position = torch.arange(shape[1]).repeat(len(kept))
    if tokens.shape[1] > max_patches:
        chosen = greedy_coreset(tokens, max_patches)
        tokens, image, position = tokens[:, chosen], image[chosen], position[chosen]
    threshold = _normal_distance(tokens, image, position, grid)
    return NormalMemory(
        backbone_id=backbone_id,
        category=category_key(category),
        tokens=tokens.contiguous(),
        threshold=threshold,
        sources=tuple(key for key, _ in kept),
        grid=grid,
    )


def greedy_coreset(tokens: Tensor, size: int, seed: int = 0) -> Tensor:
    """Indices of ``size`` patches covering the others best (greedy k-center, PatchCore), on
    all stages concatenated through a fixed random projection: deterministic."""
    flat = tokens.permute(1, 0, 2).reshape(tokens.shape[1], -1)
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(flat.shape[1], _PROJECTION_DIM, generator=generator)
    points = flat @ projection / math.sqrt(_PROJECTION_DIM)
    chosen = torch.empty(size, dtype=torch.long)
    nearest = torch.full((points.shape[0],), float("inf"))
    index = 0
    for step in range(size):
        chosen[step] = index
        nearest = torch.minimum(nearest, (points - points[index]).square().sum(dim=1))
        index = int(nearest.argmax())
    return chosen


def _normal_distance(tokens: Tensor, image: Tensor, position: Tensor, grid: int) -> float:
    """The :data:`NORMAL_QUANTILE` of the memory patches' stage-mean distance to the rest of
    the memory, each patch's own neighbourhood in its own image left out."""
    count = tokens.shape[1]
    sample = torch.linspace(0, count - 1, min(count, _THRESHOLD_SAMPLES)).round().long()
    rows, cols = position // grid, position % grid
    same_image = image[sample, None] == image[None, :]
    near = ((rows[sample, None] - rows[None, :]).abs() <= EXCLUDE_RADIUS) & (
        (cols[sample, None] - cols[None, :]).abs() <= EXCLUDE_RADIUS
    )
    excluded = same_image & near  # (n, M)
    distances = 1.0 - tokens[:, sample] @ tokens.transpose(1, 2)  # (S, n, M)
    distances = distances.masked_fill(excluded[None], float("inf")).min(dim=-1).values
    per_patch = distances.mean(dim=0)
    per_patch = per_patch[torch.isfinite(per_patch)]
    if per_patch.numel() == 0:  # a grid so small that every patch is its own neighbour
        return 0.5
    return float(torch.quantile(per_patch, NORMAL_QUANTILE))


def distance_maps(stages: Tensor, memory: NormalMemory) -> Tensor:
    """Per-stage min over the memory of (1 − cosine): (B, S, N²) from tokens (B, S, N², C)."""
    if stages.shape[1] != memory.tokens.shape[0] or stages.shape[-1] != memory.tokens.shape[-1]:
        raise MemoryMismatchError(
            f"features {tuple(stages.shape)} do not fit memory {tuple(memory.tokens.shape)}"
        )
    bank = memory.tokens.to(stages.device)
    out = []
    for row in F.normalize(stages.float(), dim=-1):  # one image at a time: N² × M per stage
        out.append((1.0 - row @ bank.transpose(1, 2)).min(dim=-1).values)
    return torch.stack(out)


def fewshot_map(stages: Tensor, memory: NormalMemory, size: int) -> Tensor:
    """The memory's map (B, size, size) in [0, 1], with its normal distance at 0.5: stage
    distances upsampled as the zero-shot map is (bilinear, corners aligned), stage mean."""
    distances = distance_maps(stages, memory)
    batch, count, _ = distances.shape
    up = F.interpolate(
        distances.reshape(batch * count, 1, memory.grid, memory.grid),
        size=(size, size),
        mode="bilinear",
        align_corners=True,
    ).reshape(batch, count, size, size)
    return normalize_scores(up.mean(dim=1), memory.threshold)


def blend(maps: Tensor, fewshot: Tensor) -> Tensor:
    """The calibrated map and the memory's map, averaged: 0.5 stays the threshold."""
    return (maps + fewshot.to(maps.device, maps.dtype)) / 2


class MemoryBank:
    """The memories a pipeline serves, by category; swapped one assignment at a time, so a
    prediction reads one memory for its whole call."""

    def __init__(self, backbone_id: str) -> None:
        self.backbone_id = backbone_id
        self._memories: dict[str, NormalMemory] = {}
        self._lock = threading.Lock()

    def get(self, category: str | None) -> NormalMemory | None:
        return self._memories.get(category_key(category))

    def put(self, memory: NormalMemory) -> None:
        """Serve ``memory`` for its category; refuses a memory of another backbone."""
        if memory.backbone_id != self.backbone_id:
            raise MemoryMismatchError(
                f"memory for {memory.category!r} was computed on {memory.backbone_id!r}, "
                f"this pipeline runs {self.backbone_id!r}"
            )
        with self._lock:
            self._memories = {**self._memories, memory.category: memory}

    def remove(self, category: str | None) -> None:
        with self._lock:
            rest = dict(self._memories)
            rest.pop(category_key(category), None)
            self._memories = rest

    def categories(self) -> list[str]:
        return sorted(self._memories)


# -- files ---------------------------------------------------------------------------------------
def save_memory(memory: NormalMemory, path: str | Path, durable: bool = True) -> None:
    """One safetensors file (tokens in float16) with the rest as JSON metadata; atomic."""
    meta = {
        "format": _FORMAT,
        "backbone_id": memory.backbone_id,
        "category": memory.category,
        "threshold": memory.threshold,
        "sources": list(memory.sources),
        "grid": memory.grid,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"tokens": memory.tokens.detach().to("cpu", torch.float16).contiguous()}
    with atomic_path(path, durable=durable) as temp:
        save_file(tensors, str(temp), metadata={"clipsam": json.dumps(meta)})


def load_memory(path: str | Path, backbone_id: str | None = None) -> NormalMemory:
    """A memory file; :class:`MemoryMismatchError` when it is not one or, given
    ``backbone_id``, was computed on another backbone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("clipsam", "{}"))
            if meta.get("format") != _FORMAT:
                raise MemoryMismatchError(f"{path} is not a normal memory file")
            tokens = f.get_tensor("tokens").float()
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, MemoryMismatchError):
            raise
        raise MemoryMismatchError(f"{path} is not a readable memory file: {exc}") from exc
    if backbone_id is not None and meta["backbone_id"] != backbone_id:
        raise MemoryMismatchError(
            f"{path} was computed on {meta['backbone_id']!r}, not {backbone_id!r}"
        )
    return NormalMemory(
        backbone_id=str(meta["backbone_id"]),
        category=str(meta["category"]),
        tokens=tokens,
        threshold=float(meta["threshold"]),
        sources=tuple(str(s) for s in meta["sources"]),
        grid=int(meta["grid"]),
    )
