"""Train micro-CLIP: a small open_clip model that knows the miniature world's parts and defects.

No pretrained CLIP can be had here, so the method is proven on a world we can train in minutes
(method spec §11). The model is an open_clip ``CLIP`` built from ``clipsam-micro.json`` and run
through the same code paths as ViT-L (tapped blocks, the value-value side path, ``ln_post`` and
``proj``, open_clip's tokenizer). Three objectives, all on the training categories only:

- **contrastive**: open_clip's own ``ClipLoss`` on image–caption pairs, captions built from the
  project's prompt vocabulary (state phrase × template, plus a defect-type word);
- **image state**: each image against its own category's normal/damaged text features, a 2-way
  softmax at the pipeline's logit scale (the probe in §11 found plain ``ClipLoss`` never learns
  the state: in-batch captions rarely share a category);
- **dense state**: the value-value tokens (what the training-free head reads) against the same
  text features, supervised by the defect mask on the patch grid: the stand-in for the
  localisation real CLIP learned from web-scale data.

Text features are prompt *ensembles* as at inference, sampled a few sentences per state per step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor
from tqdm import tqdm

from clipsam.clip_backbone import ClipBackbone, build_clip
from clipsam.config import resolve_config
from clipsam.logging_setup import configure_logging
from clipsam.prompts import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES, category_phrase
from clipsam.weights import MICRO_CLIP_WEIGHTS, WeightSource
from training.miniature.pool import ImagePool, render_pool

logger = logging.getLogger(__name__)

#: Words that name a defect type in captions ("a photo of a damaged hex nut with a scratch.").
DEFECT_WORDS = {
    "scratch": "a scratch",
    "crack": "a crack",
    "spot": "a spot",
    "contamination": "contamination",
    "missing_piece": "a missing piece",
    "discoloration": "discoloration",
    "deformation": "a deformation",
}


@dataclass(frozen=True)
class MicroClipConfig:
    """What the shipped weights were trained with (stored in the file's metadata)."""

    steps: int = 240
    batch_categories: int = 8
    images_per_category: int = 4
    pool_per_category: int = 100
    defect_rate: float = 0.6
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 20
    sentences_per_state: int = 6
    dense_weight: float = 2.0
    #: Which patch tokens the dense objective supervises: the value-value side path (what the
    #: training-free head reads), the last block's tokens through ln_post/proj, both, or
    #: none (contrastive and image-state objectives only, as real CLIP never saw a mask).
    dense_on: str = "both"
    state_weight: float = 1.0
    seed: int = 0
    #: An optional wall-clock cap; the shipped weights ran all ``steps`` (a cap that stops
    #: early makes the result depend on the machine's speed).
    max_minutes: float | None = None


def caption(category: str, kinds: Sequence[str], rng: np.random.Generator) -> str:
    """A caption from the prompt vocabulary: damaged captions name one defect type."""
    phrase = category_phrase(category)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    if not kinds:
        state = NORMAL_STATES[int(rng.integers(len(NORMAL_STATES)))]
        return template.format(state.format(phrase))
    state = ABNORMAL_STATES[int(rng.integers(len(ABNORMAL_STATES)))]
    kind = kinds[int(rng.integers(len(kinds)))]
    sentence = template.format(state.format(phrase))
    return f"{sentence.rstrip('.')} with {DEFECT_WORDS.get(kind, kind)}."


def sampled_text_features(
    backbone: ClipBackbone, categories: Sequence[str], count: int, rng: np.random.Generator
) -> Tensor:
    """(C, 2, E) normal/abnormal features per category from ``count`` sampled sentences each.

    The inference-time ensemble averages all 35 templates × states; a random subset per step is
    an unbiased stand-in that keeps the text tower's cost small.
    """
    sentences = []
    for category in categories:
        phrase = category_phrase(category)
        for states in (NORMAL_STATES, ABNORMAL_STATES):
            for _ in range(count):
                state = states[int(rng.integers(len(states)))]
                template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
                sentences.append(template.format(state.format(phrase)))
    tokens = backbone.tokenizer(sentences).to(backbone.device)
    embeddings = F.normalize(backbone._text_forward(tokens), dim=-1)
    rows = embeddings.reshape(len(categories), 2, count, -1).mean(2)
    return F.normalize(rows, dim=-1)


def patch_targets(masks: Tensor, grid: int) -> Tensor:
    """Fraction of defect pixels per patch (B, grid²), from (B, S, S) float masks."""
    return F.adaptive_avg_pool2d(masks[:, None], grid).flatten(1)


def dense_loss(tokens: Tensor, text: Tensor, target: Tensor, scale: float) -> Tensor:
    """Soft cross-entropy of each patch's normal/abnormal softmax + a dice on the abnormal map.

    ``tokens`` (B, N², E), ``text`` (B, 2, E), ``target`` (B, N²) in [0, 1]. Defect patches
    are a few per cent, so both classes are averaged separately before adding.
    """
    logits = scale * torch.einsum("bne,bke->bnk", F.normalize(tokens, dim=-1), text)
    log_probs = logits.log_softmax(-1)
    positive = target > 0.25
    ce_pos = -(log_probs[..., 1][positive]).mean() if positive.any() else logits.new_zeros(())
    ce_neg = -(log_probs[..., 0][~positive]).mean()
    probs = log_probs[..., 1].exp()
    soft = (target > 0.25).float()
    overlap = (probs * soft).sum(1)
    has = soft.sum(1) > 0
    dice = 1 - (2 * overlap + 1) / (probs.sum(1) + soft.sum(1) + 1)
    dice_term = dice[has].mean() if has.any() else logits.new_zeros(())
    return ce_pos + ce_neg + dice_term


def visual_tokens(backbone: ClipBackbone, residual: Tensor) -> Tensor:
    """Patch tokens of the last block through ``ln_post`` and ``proj`` (B, N², E)."""
    visual = backbone.visual
    return visual.ln_post(residual) @ visual.proj


def train(config: MicroClipConfig, out: Path, progress: bool = True) -> dict[str, float]:
    """Train from scratch and write ``out`` (float16 safetensors + metadata); returns metrics."""
    from clipsam.data.world import HELDOUT_CATEGORIES, TRAIN_CATEGORIES

    started = time.monotonic()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    pipeline_config = resolve_config("tiny", weights="random", seed=config.seed)
    backbone = build_clip(pipeline_config.clip, WeightSource(None, "train"), config.seed)
    model = backbone.model.train().requires_grad_(True)
    size = pipeline_config.clip.image_size
    pool = render_pool(
        TRAIN_CATEGORIES, config.pool_per_category, size, config.defect_rate, config.seed
    )
    logger.info("rendered %d training images in %.0f s", len(pool), time.monotonic() - started)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)
    ]
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        progress_frac = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress_frac))

    clip_loss = ClipLoss()
    deadline = started + 60 * config.max_minutes if config.max_minutes else math.inf
    bar = tqdm(range(config.steps), desc="micro-CLIP", disable=not progress)
    history: list[float] = []
    for step in bar:
        if time.monotonic() > deadline:
            logger.warning(
                "stopping at step %d: the %.0f-minute budget is spent", step, config.max_minutes
            )
            break
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        batch = pool.batch(rng, config.batch_categories, config.images_per_category)
        pixels = backbone.preprocess(list(batch.images))
        out_tokens = backbone._encode_images(pixels)
        cats = sorted(set(batch.categories))
        text = sampled_text_features(backbone, cats, config.sentences_per_state, rng)
        per_image_text = text[[cats.index(c) for c in batch.categories]]  # (B, 2, E)

        captions = [caption(c, k, rng) for c, k in zip(batch.categories, batch.kinds, strict=True)]
        caption_tokens = backbone.tokenizer(captions).to(backbone.device)
        caption_embeds = F.normalize(backbone._text_forward(caption_tokens), dim=-1)
        contrastive = clip_loss(out_tokens["global"], caption_embeds, model.logit_scale.exp())

        labels = torch.as_tensor([1 if k else 0 for k in batch.kinds])
        state_logits = 100.0 * torch.einsum("be,bke->bk", out_tokens["global"], per_image_text)
        state = F.cross_entropy(state_logits, labels)

        masks = torch.from_numpy(np.stack(batch.masks)).float()
        targets = patch_targets(masks, backbone.grid)
        dense = out_tokens["vv"].new_zeros(())
        if config.dense_on in ("vv", "both"):
            dense = dense + dense_loss(out_tokens["vv"], per_image_text, targets, 100.0)
        if config.dense_on in ("final", "both"):
            final = visual_tokens(backbone, out_tokens["stages"][:, -1])  # block 6 is tapped
            dense = dense + dense_loss(final, per_image_text, targets, 100.0)

        loss = contrastive + config.state_weight * state + config.dense_weight * dense
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        history.append(float(loss))
        if step % 20 == 0:
            bar.set_postfix(
                loss=f"{np.mean(history[-20:]):.3f}",
                clip=f"{float(contrastive):.2f}",
                state=f"{float(state):.2f}",
                dense=f"{float(dense):.2f}",
            )
    steps_done = len(history)
    model.eval().requires_grad_(False)
    minutes = (time.monotonic() - started) / 60
    scores = evaluate(backbone, HELDOUT_CATEGORIES, size, seed=config.seed + 1)
    scores["train_minutes"] = round(minutes, 2)
    scores["cpu_minutes"] = round(time.process_time() / 60, 2)
    scores["steps"] = steps_done
    save(model, out, config, scores)
    return scores


@torch.inference_mode()
def evaluate(
    backbone: ClipBackbone, categories: Sequence[str], size: int, seed: int, per_category: int = 24
) -> dict[str, float]:
    """Held-out image AUROC (global score) and patch AUROC (value-value tokens), full ensembles."""
    from sklearn.metrics import roc_auc_score

    backbone.model.eval()
    pool = render_pool(categories, per_category, size, 0.5, seed)
    image_scores, image_labels, patch_scores, patch_labels = [], [], [], []
    for category in categories:
        backbone._text_cache.clear()
        text = backbone.text_features(category)
        items = [i for i, c in enumerate(pool.categories) if c == category]
        pixels = backbone.preprocess([pool.images[i] for i in items])
        out = backbone.encode_images(pixels)
        image_scores += torch.softmax(100 * out["global"] @ text.T, -1)[:, 1].tolist()
        image_labels += [1 if pool.kinds[i] else 0 for i in items]
        probs = torch.softmax(100 * F.normalize(out["vv"], dim=-1) @ text.T, -1)[..., 1]
        masks = torch.from_numpy(np.stack([pool.masks[i] for i in items])).float()
        patch_scores += probs.flatten().tolist()
        patch_labels += (patch_targets(masks, backbone.grid) > 0.25).flatten().int().tolist()
    return {
        "heldout_image_auroc": round(float(roc_auc_score(image_labels, image_scores)), 4),
        "heldout_patch_auroc": round(float(roc_auc_score(patch_labels, patch_scores)), 4),
    }


def save(model: torch.nn.Module, out: Path, config: MicroClipConfig, scores: dict) -> None:
    """float16 safetensors, in open_clip's state-dict names, with how it was made as metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "model": "clipsam-micro",
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
        "config": json.dumps(asdict(config)),
        "scores": json.dumps(scores),
    }
    save_file(state, str(out), metadata=metadata)
    logger.info("wrote %s (%.1f MB): %s", out, out.stat().st_size / 1e6, scores)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.miniature.clip",
        description="Train micro-CLIP on the miniature world's training categories "
        "(deterministic; about 13 minutes on 2 CPU cores) and write float16 safetensors.",
    )
    parser.add_argument("--out", type=Path, default=MICRO_CLIP_WEIGHTS, help="output file")
    parser.add_argument("--steps", type=int, default=MicroClipConfig.steps)
    parser.add_argument(
        "--minutes",
        type=float,
        default=MicroClipConfig.max_minutes,
        help="stop early when this wall-clock budget is spent",
    )
    parser.add_argument("--seed", type=int, default=MicroClipConfig.seed)
    parser.add_argument(
        "--dense-on",
        choices=("vv", "final", "both", "none"),
        default=MicroClipConfig.dense_on,
        help="patch tokens the dense objective supervises (docs/miniature.md: 'final' leaves "
        "the training-free head's value-value path unsupervised)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    configure_logging()
    config = MicroClipConfig(
        steps=args.steps, max_minutes=args.minutes, seed=args.seed, dense_on=args.dense_on
    )
    scores = train(config, args.out, progress=not args.no_progress)
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()


__all__ = ["ImagePool", "MicroClipConfig", "caption", "main", "train"]
