"""A head proves itself before anything serves it: whole weights, all finite, a clean dry run.

``check_head_file`` is what the registry runs before a promotion or a rollback target (the CLI
and retraining alike); the backend runs ``check_head`` on its live backbone before a head is
swapped in. The dry run feeds features of the backbone's shapes, taken from the backbone id
(``<clip model>/<weights>/<size>px/<activation>/L<layers>`` and open_clip's model config), so a
head whose dimensions do not fit the backbone it claims is caught without loading any weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clipsam.heads import AnomalyHead, load_head

if TYPE_CHECKING:
    from clipsam import Pipeline

logger = logging.getLogger(__name__)


class HeadCheckError(ValueError):
    """The head must not be served; the message says why."""


@dataclass(frozen=True)
class BackboneShapes:
    stages: int  # tapped blocks
    grid: int  # patch grid side
    width: int  # residual stream width
    embed_dim: int  # joint image-text space


def pipeline_shapes(pipeline: Pipeline) -> BackboneShapes:
    clip = pipeline.clip
    return BackboneShapes(len(clip.config.layers), clip.grid, clip.width, clip.embed_dim)


def backbone_shapes(backbone_id: str) -> BackboneShapes | None:
    """The shapes a backbone id stands for; None when the id is not one clipsam builds."""
    import open_clip

    import clipsam.clip_backbone  # noqa: F401  (registers clipsam's own model configs)

    try:
        model, _weights, size, _activation, layers = backbone_id.split("/")
        config = open_clip.get_model_config(model)
        vision = config["vision_cfg"]
        patch = int(vision["patch_size"])
        return BackboneShapes(
            stages=len(layers.removeprefix("L").split("-")),
            grid=int(size.removesuffix("px")) // patch,
            width=int(vision["width"]),
            embed_dim=int(config["embed_dim"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


def _shapes_from_options(head: AnomalyHead) -> BackboneShapes:
    """Fallback for backbone ids clipsam cannot read: the head's own knobs."""
    options = head.options
    grid = int(options.get("grid", getattr(head, "grid", 0)))
    dim = int(options.get("dim", 8))
    return BackboneShapes(int(options.get("stages", 4)), grid, int(options.get("in_dim", dim)), dim)


@torch.inference_mode()
def check_head(head: AnomalyHead, shapes: BackboneShapes | None = None) -> None:
    """Finite weights, then finite logits of shape (1, S, 2, N, N) on seeded random features."""
    for name, tensor in [*head.named_parameters(), *head.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise HeadCheckError(f"head {head.version}: {name} holds NaN or infinite values")
    shapes = shapes or _shapes_from_options(head)
    generator = torch.Generator().manual_seed(0)
    tokens = shapes.grid * shapes.grid

    def features(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator)

    batch = {
        "stages": features(1, shapes.stages, tokens, shapes.width),
        "global": torch.nn.functional.normalize(features(1, shapes.embed_dim), dim=-1),
        "vv": features(1, tokens, shapes.embed_dim),
    }
    text = torch.nn.functional.normalize(features(2, shapes.embed_dim), dim=-1)
    device = next((p.device for p in head.parameters()), torch.device("cpu"))
    was_training = head.training
    try:
        logits = head.eval()({k: v.to(device) for k, v in batch.items()}, text.to(device))
    except Exception as exc:
        raise HeadCheckError(
            f"head {head.version} does not run on {shapes}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        head.train(was_training)
    if logits.shape[-3:] != (2, shapes.grid, shapes.grid):
        raise HeadCheckError(f"head {head.version} gave logits {tuple(logits.shape)} for {shapes}")
    if not torch.isfinite(logits).all():
        raise HeadCheckError(f"head {head.version} gives NaN or infinite logits")


def check_head_file(
    path: str | Path, backbone_id: str | None = None, shapes: BackboneShapes | None = None
) -> AnomalyHead:
    """Load the whole file (strict) and check it; ``HeadCheckError`` or ``HeadLoadError``."""
    head = load_head(path, backbone_id)
    check_head(head, shapes or backbone_shapes(head.backbone_id))
    return head
