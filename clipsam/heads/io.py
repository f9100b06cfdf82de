"""Building heads by kind, and saving/loading them as safetensors with JSON metadata.

One ``.safetensors`` file holds the weights and, in its header, the JSON that rebuilds the
module (kind, knobs, backbone id, version) and its calibrated thresholds, if any. Writes are
atomic; loads never unpickle anything.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from clipsam.atomic import atomic_path
from clipsam.calibration import Thresholds
from clipsam.config import HeadConfig
from clipsam.defect_types import TypeClassifier
from clipsam.heads.base import AnomalyHead
from clipsam.heads.linear import LinearHead, load_aprilgan_state
from clipsam.heads.umci import UMCIHead
from clipsam.heads.zero_shot import ZeroShotHead

FORMAT = "clipsam-head"
FORMAT_VERSION = 1
_META_KEY = "clipsam_head"
_HEADS: dict[str, type[AnomalyHead]] = {
    "umci": UMCIHead,
    "linear": LinearHead,
    "none": ZeroShotHead,
}


class HeadLoadError(ValueError):
    """A head file is missing, corrupted, or not a clipsam head."""


class HeadMismatchError(HeadLoadError):
    """A head was trained for another CLIP backbone than the one it is loaded into."""


def build_head(
    config: HeadConfig, backbone_id: str, in_dim: int, dim: int, stages: int, grid: int
) -> AnomalyHead:
    """A freshly initialised head of ``config.head`` kind for a backbone with these dims."""
    if config.head == "umci":
        return UMCIHead(
            backbone_id, in_dim, dim, stages, grid, paths=config.paths, scales=config.scales,
            attn_heads=config.attn_heads, share_attn=config.share_attn,
            logit_scale=config.logit_scale,
        )  # fmt: skip
    if config.head == "linear":
        return LinearHead(backbone_id, in_dim, dim, stages, grid, config.logit_scale)
    if config.head == "none":
        return ZeroShotHead(backbone_id, grid, config.logit_scale)
    raise ValueError(f"unknown head {config.head!r}; choose one of: {', '.join(_HEADS)}")


def save_head(
    head: AnomalyHead, path: str | Path, version: str | None = None, extra: dict | None = None
) -> str:
    """Write ``head`` to ``path`` atomically; returns its version (a content hash by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0644: other users' backends read it; durable: a head is worth an fsync.
    with atomic_path(path) as temp:
        tmp_name = str(temp)
        save_model(head, tmp_name)  # first pass: hash the weights exactly as stored
        version = version or f"{head.kind}-{_content_digest(tmp_name, head)[:12]}"
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "head": head.kind,
            "options": head.options,
            "backbone_id": head.backbone_id,
            "version": version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "extra": extra or {},
        }
        if head.thresholds is not None:
            metadata["thresholds"] = head.thresholds.to_dict()
        if head.type_classifier is not None:
            metadata["types"] = head.type_classifier.to_dict()
        save_model(head, tmp_name, metadata={_META_KEY: json.dumps(metadata)})
    head.version = version
    return version


def read_head_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a head file, or :class:`HeadLoadError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise HeadLoadError(f"head file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise HeadLoadError(
            f"{path} is not a readable safetensors file (corrupted?): {exc}"
        ) from exc
    if raw is None:
        raise HeadLoadError(f"{path} is a safetensors file but not a clipsam head (no metadata)")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HeadLoadError(f"{path} has corrupted head metadata: {exc}") from exc
    if metadata.get("format") != FORMAT or metadata.get("head") not in _HEADS:
        raise HeadLoadError(f"{path} has unknown head format {metadata.get('format')!r}")
    return metadata


def load_head(path: str | Path, backbone_id: str | None = None) -> AnomalyHead:
    """Rebuild a head from its file; with ``backbone_id``, refuse heads for another backbone."""
    metadata = read_head_metadata(path)
    if backbone_id is not None and metadata["backbone_id"] != backbone_id:
        raise HeadMismatchError(
            f"{path} was trained for CLIP backbone {metadata['backbone_id']!r}, but this pipeline "
            f"runs {backbone_id!r}; load it into a pipeline built with that backbone "
            "(preset, weights, image_size, activation and layers must match)"
        )
    options = dict(metadata["options"])
    if "scales" in options:
        options["scales"] = tuple(options["scales"])
    head = _HEADS[metadata["head"]](metadata["backbone_id"], **options)
    try:
        load_model(head, str(path), strict=True, device="cpu")
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise HeadLoadError(f"{path}: weights do not fit a {metadata['head']} head: {exc}") from exc
    head.version = metadata["version"]
    head.thresholds = Thresholds.from_dict(metadata.get("thresholds"))
    head.type_classifier = TypeClassifier.from_dict(metadata.get("types"))
    return head.eval()


def head_from_aprilgan(path: str | Path, backbone_id: str, grid: int = 37) -> LinearHead:
    """A ``linear`` head holding APRIL-GAN's released weights for ``backbone_id``."""
    state = load_aprilgan_state(path)
    stages = len({k.split(".")[1] for k in state})
    dim, in_dim = state["fc.0.weight"].shape
    head = LinearHead(backbone_id, int(in_dim), int(dim), stages, grid)
    head.load_state_dict(state, strict=True)
    head.version = f"aprilgan-{_file_digest(path)[:12]}"
    return head.eval()


def _content_digest(weights_file: str, head: AnomalyHead) -> str:
    """The weights' digest; with thresholds or defect types, of all of them (a recalibrated
    head, or one that learned types, is a new version)."""
    digest = _file_digest(weights_file)
    if head.thresholds is None and head.type_classifier is None:
        return digest
    thresholds = json.dumps(head.thresholds.to_dict() if head.thresholds else None, sort_keys=True)
    if head.type_classifier is None:  # the digest heads had before types existed
        return hashlib.sha256(f"{digest}:{thresholds}".encode()).hexdigest()
    types = json.dumps(head.type_classifier.to_dict(), sort_keys=True)
    return hashlib.sha256(f"{digest}:{thresholds}:{types}".encode()).hexdigest()


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
