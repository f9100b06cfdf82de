"""MMR fusion rules in the miniature world, each against the same rule without SAM.

Does SAM's refinement raise what the user sees over the thresholded coarse map (issue 11)? On
the shipped micro-CLIP (training-free head) and micro-SAM, this computes each image's coarse map,
its components above τ and SAM's masks at the three prompt levels, once, then scores final
masks made by several rules on the held-out categories' defective images (region Dice, region F1
pooled, the share left without a region) and on their good images (the share given a region).
A rule's threshold t is chosen on training-category images (the best mean Dice), never on the
held-out ones. Every SAM rule has a companion that ignores SAM (hysteresis: A > t connected to a
component), and SAM's prompts can be put in the wrong frame (x <-> y): a gain that survives
those is not SAM's. Never pass/fail; docs/miniature.md has the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _report  # sibling module: this folder is on sys.path when run as a script
import numpy as np

THRESHOLDS = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__
    )
    parser.add_argument("--heldout-per-category", type=int, default=16, metavar="N")
    parser.add_argument("--train-per-category", type=int, default=6, metavar="N")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--sam-weights",
        type=Path,
        default=None,
        help="a micro-SAM safetensors file to use instead of the shipped one",
    )
    return parser.parse_args(argv)


@dataclass
class Seen:
    """One image as MMR sees it."""

    amap: np.ndarray  # calibrated coarse map at the image size
    components: np.ndarray  # bool: union of the components above τ
    sam: list[tuple[np.ndarray, np.ndarray]]  # per level: masks (K, H, W), predicted IoU (K,)
    truth: np.ndarray


def observe(pipeline: Any, data: Sequence[Any], swap_prompts: bool = False) -> list[Seen]:
    from clipsam.images import image_hash
    from clipsam.pipeline import resize_map
    from clipsam.refine import decode_levels, find_components, prompts_for

    out = []
    for item in data:
        digest = image_hash(item.image)
        features = pipeline.clip_features([item.image], [digest])
        maps, _ = pipeline.score_features(
            features, pipeline.head, pipeline.text_features(item.category)
        )
        amap = resize_map(maps[0], item.image.shape[:2])
        components = find_components(amap, pipeline.config.mmr)
        union = np.zeros(amap.shape, dtype=bool)
        for component in components:
            union |= component.mask
        levels = []
        if components:
            embedding = pipeline.sam_embeddings([item.image], [digest])[0]
            points, boxes = prompts_for(components, amap.shape, pipeline.config.mmr)
            if swap_prompts:
                points, boxes = points[..., ::-1].copy(), boxes[:, [1, 0, 3, 2]].copy()
            levels = decode_levels(pipeline.sam, embedding, amap.shape, points, boxes)
        out.append(Seen(amap, union, levels, item.mask))
    return out


def sam_union(seen: Seen) -> np.ndarray:
    union = np.zeros(seen.amap.shape, dtype=bool)
    for masks, _ in seen.sam:
        union |= masks.any(0)
    return union


def specified(seen: Seen, t: float) -> np.ndarray:
    """Method spec §3 (``clipsam.refine.fuse``, default λ): the fused map > t, inside
    components ∪ SAM's masks."""
    from clipsam.config import MMRConfig
    from clipsam.refine import fuse

    fused = fuse(seen.amap, seen.sam, MMRConfig().lambdas)
    return (fused > t) & (seen.components | sam_union(seen))


def support(seen: Seen, t: float) -> np.ndarray:
    """SAM's masks say where a region may grow: A > t inside components ∪ SAM's masks."""
    return (seen.amap > t) & (seen.components | sam_union(seen))


def hysteresis(seen: Seen, t: float) -> np.ndarray:
    """The same growth without SAM: A > t, connected to a component."""
    from scipy import ndimage

    labels, _ = ndimage.label(seen.amap > t, np.ones((3, 3), dtype=bool))
    keep = np.unique(labels[seen.components])
    return np.isin(labels, keep[keep > 0])


Rule = Callable[[Seen, float], np.ndarray]
RULES: dict[str, Rule] = {
    "MMR as specified: fused map > t": specified,
    "SAM as support: A > t inside components ∪ SAM's masks": support,
    "no SAM, hysteresis: A > t connected to a component": hysteresis,
}


def masks_of(rule: Rule, seen: Sequence[Seen], t: float) -> list[np.ndarray]:
    return [rule(s, t) if s.components.any() else s.components for s in seen]


def scores(predicted: list[np.ndarray], seen: Sequence[Seen]) -> dict[str, float]:
    from training.miniature import protocol

    defective = [i for i, s in enumerate(seen) if s.truth.any()]
    good = [i for i, s in enumerate(seen) if not s.truth.any()]
    region = protocol.region_scores(
        [predicted[i] for i in defective], [seen[i].truth for i in defective]
    )
    flagged = float(np.mean([predicted[i].any() for i in good])) if good else float("nan")
    # What a user sees over all images: a good image scores 1 when left empty, else 0.
    pairs = zip(predicted, seen, strict=True)
    per_image = float(np.mean([protocol.dice(mask, s.truth) for mask, s in pairs]))
    return {
        "dice": region.dice,
        "f1": region.f1,
        "empty": region.empty,
        "good_flagged": flagged,
        "per_image": per_image,
    }


def run(args: argparse.Namespace) -> str:
    import clipsam
    from clipsam.data.world import HELDOUT_CATEGORIES, TRAIN_CATEGORIES
    from clipsam.weights import WeightPaths
    from training.miniature import protocol

    paths = WeightPaths.from_env()
    if args.sam_weights is not None:
        paths = dataclasses.replace(paths, sam=args.sam_weights)
    pipeline = clipsam.load_pipeline("tiny", weights="pretrained", weight_paths=paths)
    heldout_data = protocol.world_images(HELDOUT_CATEGORIES, args.heldout_per_category, 0.6, 1)
    train_data = protocol.world_images(TRAIN_CATEGORIES, args.train_per_category, 0.6, 20)
    heldout, train = observe(pipeline, heldout_data), observe(pipeline, train_data)
    swapped = observe(pipeline, heldout_data, swap_prompts=True)

    rows: list[tuple[str, float | None, dict[str, float]]] = [
        ("coarse map > τ (no SAM)", None, scores([s.components for s in heldout], heldout))
    ]
    for name, rule in RULES.items():
        best = max(THRESHOLDS, key=lambda t: scores(masks_of(rule, train, t), train)["dice"])
        rows.append((name, best, scores(masks_of(rule, heldout, best), heldout)))
        if rule is not hysteresis:
            wrong = scores(masks_of(rule, swapped, best), swapped)
            rows.append((f"{name}, prompts in the wrong frame", best, wrong))
    spec_default = scores(masks_of(specified, heldout, 0.5), heldout)
    rows.insert(1, ("MMR as specified, t = τ = 0.5 (the pipeline)", 0.5, spec_default))

    defective = sum(s.truth.any() for s in heldout)
    lines = [
        "# MMR fusion rules in miniature, each against the same rule without SAM",
        "",
        f"Held-out categories: {len(heldout)} images ({defective} defective); t chosen for the "
        f"best mean Dice on {len(train)} training-category images. Shipped micro-CLIP "
        "(training-free head, calibrated τ) and micro-SAM. Per image: the mean over all "
        "held-out images of the region Dice, a good image scoring 1 when left empty.",
        "",
        "| final mask | t | Dice | region F1 | no region | good images flagged | per image |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t, row in rows:
        shown = "–" if t is None else f"{t:g}"
        lines.append(
            f"| {name} | {shown} | {row['dice']:.3f} | {row['f1']:.3f} | {row['empty']:.2f} "
            f"| {row['good_flagged']:.2f} | {row['per_image']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
