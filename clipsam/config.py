"""Typed configuration: one frozen dataclass per stage, presets by name, overrides by field name.

``resolve_config("paper", tau=0.3, head="linear")`` finds each keyword in whichever stage config
owns it, so callers never need to know the nesting; unknown names fail with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

HeadKind = Literal["umci", "linear", "none"]
UMCIPaths = Literal["both", "strip", "scale"]
#: ``auto`` = bf16 on CUDA and on CPUs with native bf16, else fp32 (``clipsam.precision``).
Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class ClipConfig:
    """CLIP stage: open_clip architecture, pretrained tag, input size and tapped blocks."""

    clip_model: str = "ViT-L-14-336"
    clip_pretrained: str = "openai"
    image_size: int = 518
    #: 1-indexed blocks whose residual-stream output (before ln_post) feeds the head.
    layers: tuple[int, ...] = (6, 12, 18, 24)
    #: QuickGELU is what the ``openai`` weights were trained with; APRIL-GAN (and so the
    #: published numbers) ran plain GELU at 518², which ``paper`` and ``fast`` follow
    #: (docs/method.md, "Deliberate differences from the reference code").
    activation: Literal["quick_gelu", "gelu"] = "quick_gelu"
    #: Last blocks whose value-value attention feeds the training-free ``none`` head.
    vv_blocks: int = 4


@dataclass(frozen=True)
class HeadConfig:
    """The trainable head and the UMCI ablation knobs (method spec §2)."""

    head: HeadKind = "umci"
    paths: UMCIPaths = "both"
    scales: tuple[int, ...] = (1, 3, 5)
    attn_heads: int = 8
    #: One pair of MHAs for all stages (12.6M parameters) instead of one pair per stage (26.8M).
    share_attn: bool = False
    logit_scale: float = 100.0


@dataclass(frozen=True)
class SamConfig:
    """SAM stage: which segment-anything image encoder."""

    sam_model: Literal["vit_h", "vit_l", "vit_b", "tiny"] = "vit_h"


@dataclass(frozen=True)
class MMRConfig:
    """Multi-level Mask Refinement knobs (method spec §3)."""

    tau: float = 0.5
    min_area_frac: float = 1e-4
    top_k: int = 8
    box_grow: float = 0.05
    centroid_point: bool = False
    #: Weights of the point, box and point+box levels in the fused map.
    lambdas: tuple[float, float, float] = (0.5, 0.5, 0.5)
    use_sam: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``load_pipeline`` needs; built from a preset plus overrides."""

    preset: str = "paper"
    clip: ClipConfig = field(default_factory=ClipConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    mmr: MMRConfig = field(default_factory=MMRConfig)
    #: ``pretrained`` loads real weights (download or local files); ``random`` never touches disk.
    weights: Literal["pretrained", "random"] = "pretrained"
    #: Seed of the random backbone weights: same seed, same backbone in every process.
    seed: int = 0
    device: str = "auto"
    #: Backbone precision: ``auto`` = bf16 on CUDA and on CPUs with native bf16, else fp32.
    precision: Precision = "auto"
    #: SAM's encoder attention through SDPA with the rel-pos bias as its mask (same math).
    fast_attention: bool = True
    #: ``int8``: the frozen encoders' linear layers (CLIP's visual tower, SAM's image encoder)
    #: run int8 dynamic quantisation, CPU only, fp32 elsewhere (``clipsam.quantize``). Not the
    #: same numbers as fp32, so off by default; README, Benchmarks has its speed and agreement.
    quantize: Literal["none", "int8"] = "none"
    batch_size: int = 8
    #: Image score = w · s + (1 − w) · max of the final map (method spec §4), where s is
    #: ``clip_max``: CLIP's global embedding against T; ``hsf``: AdaCLIP's hybrid semantic
    #: fusion (KMeans over the top-100 patches' tokens, centre fused with the global embedding).
    image_score: Literal["clip_max", "hsf"] = "clip_max"
    image_score_weight: float = 0.5
    cache_items: int = 64
    cache_dir: str | None = None
    #: Size cap of the on-disk cache; the least recently used files go first.
    cache_disk_gb: float = 20.0
    #: Frozen features are stored (and always read back) in this dtype, so cold == warm.
    cache_dtype: Literal["float16", "float32"] = "float16"
    head_path: str | None = None


_SECTIONS = ("clip", "head", "sam", "mmr")

PRESETS: dict[str, PipelineConfig] = {
    "paper": PipelineConfig(preset="paper", clip=ClipConfig(activation="gelu")),
    "fast": PipelineConfig(
        preset="fast", clip=ClipConfig(activation="gelu"), sam=SamConfig(sam_model="vit_b")
    ),
    "tiny": PipelineConfig(
        preset="tiny",
        clip=ClipConfig(
            clip_model="clipsam-micro",
            clip_pretrained="miniature",
            image_size=224,
            layers=(2, 3, 5, 6),
            vv_blocks=2,
        ),
        sam=SamConfig(sam_model="tiny"),
        # micro-CLIP and micro-SAM, shipped in clipsam/model_weights (docs/miniature.md);
        # weights="random" gives the same architecture seeded, for plumbing tests.
        weights="pretrained",
        cache_dtype="float32",
        precision="fp32",  # tests compare exact numbers across processes and runs
    ),
}


def resolve_config(preset: str | PipelineConfig = "paper", **overrides: Any) -> PipelineConfig:
    """Return the preset's config with ``overrides`` applied by field name.

    ``head="linear"`` sets the head kind; a whole section may be passed as a dataclass
    (``mmr=MMRConfig(tau=0.3)``).
    """
    if isinstance(preset, PipelineConfig):
        config = preset
    else:
        try:
            config = PRESETS[preset]
        except KeyError:
            raise ValueError(
                f"unknown preset {preset!r}; available presets: {', '.join(PRESETS)}"
            ) from None
    top_fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    section_updates: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    top_updates: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in _SECTIONS and dataclasses.is_dataclass(value):
            top_updates[key] = value
        elif (section := _section_of(key)) is not None:
            section_updates[section][key] = _coerce(value)
        elif key in top_fields:
            top_updates[key] = value
        else:
            raise ValueError(
                f"unknown config field {key!r}; valid fields: {', '.join(all_fields())}"
            )
    for section, updates in section_updates.items():
        if updates:
            current = top_updates.get(section, getattr(config, section))
            top_updates[section] = dataclasses.replace(current, **updates)
    return dataclasses.replace(config, **top_updates)


def overrides_from_json(text: str, source: str) -> dict[str, Any]:
    """``resolve_config`` overrides written as a JSON object; ``source`` names it in errors."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not valid JSON, e.g. '{{\"tau\": 0.4}}': {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"{source} must be a JSON object of config fields, got {type(value).__name__}"
        )
    return value


def all_fields() -> list[str]:
    """Every name ``resolve_config`` accepts as an override."""
    names = [f.name for f in dataclasses.fields(PipelineConfig) if f.name not in _SECTIONS]
    for section in _SECTIONS:
        names += [f.name for f in dataclasses.fields(_SECTION_TYPES[section])]
    return names


_SECTION_TYPES: dict[str, type] = {
    "clip": ClipConfig,
    "head": HeadConfig,
    "sam": SamConfig,
    "mmr": MMRConfig,
}


def _section_of(key: str) -> str | None:
    for section, cls in _SECTION_TYPES.items():
        if key in {f.name for f in dataclasses.fields(cls)}:
            return section
    return None


def _coerce(value: Any) -> Any:
    """Lists become tuples so configs stay hashable and frozen."""
    return tuple(value) if isinstance(value, list) else value


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)
