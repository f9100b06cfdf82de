"""The paper's ablation table in miniature: micro-CLIP and micro-SAM on the miniature world.

Heads train on ``TRAIN_CATEGORIES`` of ``clipsam.data.world`` and are judged on the
``HELDOUT_CATEGORIES``, which no objective (micro-CLIP, micro-SAM, the heads) ever saw: the
paper's cross-dataset protocol in miniature, with the data of the claim tests
(``tests/miniature``, ``training/miniature/protocol.py``). Three tables and a picture grid:

  CLIP stage   pixel AUROC / AP / F1-max / AUPRO of the coarse map (class means, CLIP input
               size): UMCI (both paths, strip only, scale only), linear, training-free
  MMR levels   region Dice / region F1 / share of images with no region, on the defective
               held-out images, UMCI head: coarse map only, point, box, point+box, all three
  image score  image AUROC / F1-max over all held-out images (class means), UMCI head + MMR:
               CLIP global only (w = 1), map max only (w = 0), fused (w = 0.5), HSF

It writes docs/miniature_ablation.md and docs/miniature_grid.png by default; it never passes
or fails. About 3-5 minutes on 2 free CPU cores at the default sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _report  # sibling module: this folder is on sys.path when run as a script
import numpy as np

if TYPE_CHECKING:
    from clipsam.heads import AnomalyHead
    from clipsam.pipeline import Pipeline, Prediction
    from training.miniature.protocol import LabeledImage
    from training.trainer import TrainingSample

DOCS = _report.ROOT / "docs"
TILE = 192  # grid tile size in pixels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=(
            "Default sizes are those of the claim tests (tests/miniature/conftest.py): 10 "
            "training images per training category, 16 per held-out category, 60%% defective, "
            "6 epochs. Smaller values give a quick check that the script runs. On a shared "
            "machine --threads 1 is much faster than oversubscribed threads."
        ),
    )
    parser.add_argument("--train-per-category", type=int, default=10, metavar="N")
    parser.add_argument("--heldout-per-category", type=int, default=16, metavar="N")
    parser.add_argument("--defect-rate", type=float, default=0.6, help="share of defective images")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trained head")
    parser.add_argument("--seed", type=int, default=0, help="head initialisation and training")
    parser.add_argument("--rows", type=int, default=4, help="held-out images in the grid")
    parser.add_argument(
        "--weights",
        choices=("pretrained", "random"),
        default=None,
        help="override the tiny preset's weights (default: the preset's, i.e. the shipped "
        "micro-CLIP and micro-SAM)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads(N); 0: one per core not busy with other processes",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DOCS / "miniature_ablation.md",
        help="where the report goes",
    )
    parser.add_argument(
        "--grid",
        type=Path,
        default=None,
        help="where the picture grid goes (default: miniature_grid.png beside --out)",
    )
    return parser.parse_args(argv)


# ---- the measurements ---------------------------------------------------------------------

#: CLIP-stage rows: label → (head kind, head options).
HEADS: dict[str, tuple[str, dict[str, Any]]] = {
    "UMCI, both paths (default)": ("umci", {"paths": "both"}),
    "UMCI, strip path only": ("umci", {"paths": "strip"}),
    "UMCI, scale path only": ("umci", {"paths": "scale"}),
    "linear head": ("linear", {}),
    "training-free head": ("none", {}),
}
PIXEL_COLUMNS = (
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_ap", "pixel AP"),
    ("pixel_f1_max", "pixel F1-max"),
    ("aupro", "AUPRO"),
)
#: MMR rows: label → (use SAM, λ of the point, box and point+box levels).
MMR_LEVELS: dict[str, tuple[bool, tuple[float, float, float]]] = {
    "coarse map only (no SAM)": (False, (0.5, 0.5, 0.5)),
    "L1: point prompts only": (True, (0.5, 0.0, 0.0)),
    "L2: box prompts only": (True, (0.0, 0.5, 0.0)),
    "L3: point + box prompts only": (True, (0.0, 0.0, 0.5)),
    "L1 + L2 + L3 (default)": (True, (0.5, 0.5, 0.5)),
}
#: Image-score rows: label → (``image_score``, ``image_score_weight``).
IMAGE_SCORES: dict[str, tuple[str, float]] = {
    "CLIP global score only (w = 1)": ("clip_max", 1.0),
    "map maximum only (w = 0)": ("clip_max", 0.0),
    "fused, w = 0.5 (default)": ("clip_max", 0.5),
    "HSF (AdaCLIP), w = 0.5": ("hsf", 0.5),
}


def free_cores() -> int:
    """Cores not busy with other processes (by the 1-minute load average), at least one: the
    heads here are small, and threads that wait on busy cores make them many times slower."""
    cores = len(os.sched_getaffinity(0))
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


class Progress:
    """Progress lines with the seconds since the start, flushed at once."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def predictions(
    pipeline: Pipeline,
    head: AnomalyHead,
    data: Sequence[LabeledImage],
    **config: Any,
) -> list[Prediction]:
    """``pipeline.predict`` per category with ``head`` and top-level config fields replaced
    (``image_score=...``, ``mmr=...``), in the order of ``data``."""
    original_head, original_config = pipeline.head, pipeline.config
    pipeline.set_head(head)
    pipeline.config = dataclasses.replace(original_config, **config)
    out: list[Any] = [None] * len(data)
    try:
        for category in sorted({d.category for d in data}):
            indices = [i for i, d in enumerate(data) if d.category == category]
            found = pipeline.predict([data[i].image for i in indices], category)
            for i, prediction in zip(indices, found, strict=True):
                out[i] = prediction
    finally:
        pipeline.config = original_config
        pipeline.set_head(original_head)
    return out


def image_metrics(data: Sequence[LabeledImage], scores: Sequence[float]) -> dict[str, float]:
    """Image AUROC and F1-max per category, then their unweighted mean (method spec §6)."""
    from clipsam import metrics

    rows: dict[str, list[float]] = {"image_auroc": [], "image_f1_max": []}
    for category in sorted({d.category for d in data}):
        picked = [
            (s, d.mask.any()) for s, d in zip(scores, data, strict=True) if d.category == category
        ]
        s, y = np.asarray([p[0] for p in picked]), np.asarray([p[1] for p in picked])
        if y.all() or not y.any():
            continue
        rows["image_auroc"].append(metrics.image_auroc(s, y))
        rows["image_f1_max"].append(metrics.image_f1_max(s, y))
    return {k: float(np.mean(v)) if v else math.nan for k, v in rows.items()}


def coarse_map(
    pipeline: Pipeline, head: AnomalyHead, sample: TrainingSample, shape: tuple[int, int]
) -> np.ndarray:
    """One image's coarse map (before SAM) at ``shape``."""
    from clipsam.pipeline import resize_map

    text = pipeline.text_features(sample.category)
    return resize_map(pipeline.coarse_maps([sample.features], head, text)[0], shape)


# ---- the picture grid ---------------------------------------------------------------------


def _jet(values: np.ndarray) -> np.ndarray:
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.concatenate(
        [np.clip(1.5 - np.abs(4 * v - 3), 0, 1), np.clip(1.5 - np.abs(4 * v - 2), 0, 1),
         np.clip(1.5 - np.abs(4 * v - 1), 0, 1)], axis=-1,
    )  # fmt: skip
    return (rgb * 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=1, border_value=0)


def _draw(image: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]]) -> Any:
    """``image`` at tile size with each mask's outline (drawn at tile size, 2 px) on it."""
    from PIL import Image
    from scipy import ndimage

    tile = np.asarray(Image.fromarray(image).resize((TILE, TILE), Image.Resampling.BILINEAR))
    tile = tile.copy()
    for mask, colour in masks:
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((TILE, TILE))) > 127
        edge = ndimage.binary_dilation(_outline(small), iterations=1)
        tile[edge] = colour
    return Image.fromarray(tile)


GREEN, RED = (40, 230, 60), (255, 40, 40)
COLUMNS = (
    "input",
    "ground truth (green)",
    "coarse map, training-free",
    "coarse map, UMCI",
    "MMR mask, UMCI (red)",
)


def write_grid(
    path: Path,
    rows: Sequence[tuple[LabeledImage, np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """rows: (image, training-free map, UMCI map, final mask); an indexed-colour PNG."""
    from PIL import Image, ImageDraw

    gap, head, label = 4, 16, 110
    width = label + len(COLUMNS) * (TILE + gap)
    figure = Image.new("RGB", (width, head + len(rows) * (TILE + gap)), "white")
    draw = ImageDraw.Draw(figure)
    for c, name in enumerate(COLUMNS):
        draw.text((label + c * (TILE + gap) + 2, 2), name, fill="black")
    for r, (item, free_map, umci_map, final) in enumerate(rows):
        y = head + r * (TILE + gap)
        draw.text((4, y + TILE // 2 - 6), item.category, fill="black")
        truth = [(item.mask, GREEN)]
        tiles = [
            _draw(item.image, []),
            _draw(item.image, truth),
            _draw(_jet(free_map), truth),
            _draw(_jet(umci_map), truth),
            _draw(item.image, [(item.mask, GREEN), (final, RED)]),
        ]
        for c, tile in enumerate(tiles):
            figure.paste(tile, (label + c * (TILE + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


# ---- the report ---------------------------------------------------------------------------


def _table(title: str, columns: Sequence[str], rows: Mapping[str, Sequence[float]]) -> str:
    lines = [
        f"| {title} | " + " | ".join(columns) + " |",
        "|---" + "|---:" * len(columns) + "|",
    ]
    for name, values in rows.items():
        cells = ("–" if math.isnan(v) else f"{100 * v:.1f}" for v in values)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def run(args: argparse.Namespace) -> str:
    # The repository root first: this folder's training.py would shadow the training package.
    sys.path.insert(0, str(_report.ROOT))
    import torch

    import clipsam
    from clipsam.config import MMRConfig
    from clipsam.data.world import HELDOUT_CATEGORIES, TRAIN_CATEGORIES
    from clipsam.weights import ENV_CLIP, ENV_SAM
    from training.miniature import protocol
    from training.trainer import evaluate_head

    torch.set_num_threads(args.threads or free_cores())
    say = Progress()
    overrides: dict[str, Any] = {"cache_items": 100_000}  # every image's features stay cached
    if args.weights:
        overrides["weights"] = args.weights
    pipeline = clipsam.load_pipeline("tiny", **overrides)
    info = pipeline.info()
    say(f"pipeline: CLIP {info['clip_backbone']}, SAM {info['sam_backbone']}, "
        f"random weights: {info['random_weights']}")  # fmt: skip

    train_data = protocol.world_images(
        TRAIN_CATEGORIES, args.train_per_category, args.defect_rate, seed=2
    )
    heldout = protocol.world_images(
        HELDOUT_CATEGORIES, args.heldout_per_category, args.defect_rate, seed=1
    )
    defective = [item for item in heldout if item.mask.any()]
    say(f"rendered {len(train_data)} training and {len(heldout)} held-out images")
    train_features = protocol.features(pipeline, train_data)
    heldout_features = protocol.features(pipeline, heldout)
    say("CLIP features cached")

    # ---- CLIP stage
    heads: dict[str, AnomalyHead] = {}
    head_seconds: dict[str, float] = {}
    clip_rows: dict[str, list[float]] = {}
    for name, (kind, options) in HEADS.items():
        started = time.perf_counter()
        if kind == "none":
            heads[name] = pipeline.head
        else:
            heads[name] = protocol.train(
                pipeline, train_features, kind, epochs=args.epochs, seed=args.seed, **options
            )
        head_seconds[name] = time.perf_counter() - started
        mean = evaluate_head(pipeline, heads[name], heldout_features)["mean"]
        clip_rows[name] = [mean[key] for key in (k for k, _ in PIXEL_COLUMNS)]
        say(f"{name}: pixel AUROC {100 * mean['pixel_auroc']:.1f} "
            f"(trained in {head_seconds[name]:.0f} s)")  # fmt: skip
    umci = heads["UMCI, both paths (default)"]
    trained_heads = [name for name, (kind, _) in HEADS.items() if kind != "none"]

    # ---- MMR levels
    truths = [item.mask for item in defective]
    mmr_rows: dict[str, list[float]] = {}
    default_mmr: MMRConfig = pipeline.config.mmr
    for name, (use_sam, lambdas) in MMR_LEVELS.items():
        mmr = dataclasses.replace(default_mmr, use_sam=use_sam, lambdas=lambdas)
        scores = protocol.region_scores(
            protocol.predicted_masks(pipeline, umci, defective, mmr), truths
        )
        mmr_rows[name] = [scores.dice, scores.f1, scores.empty]
        say(f"{name}: Dice {100 * scores.dice:.1f}, region F1 {100 * scores.f1:.1f}")

    # ---- image scores
    image_rows: dict[str, list[float]] = {}
    fused: list[Prediction] = []
    for name, (kind, weight) in IMAGE_SCORES.items():
        found = predictions(pipeline, umci, heldout, image_score=kind, image_score_weight=weight)
        if kind == "clip_max" and weight == pipeline.config.image_score_weight:
            fused = found
        result = image_metrics(heldout, [p.score for p in found])
        image_rows[name] = [result["image_auroc"], result["image_f1_max"]]
        say(f"{name}: image AUROC {100 * result['image_auroc']:.1f}")

    # ---- the grid: the first defective image of each held-out category, then the next ones
    grid_path = args.grid or args.out.parent / "miniature_grid.png"
    rank: dict[str, int] = {}
    keys = []
    for i, item in enumerate(heldout):
        if item.mask.any():
            rank[item.category] = rank.get(item.category, -1) + 1
            keys.append((rank[item.category], i))
    order = [i for _, i in sorted(keys)]
    grid_rows = []
    for i in order[: args.rows]:
        item, sample = heldout[i], heldout_features[i]
        shape = (item.mask.shape[0], item.mask.shape[1])
        grid_rows.append((
            item,
            coarse_map(pipeline, heads["training-free head"], sample, shape),
            coarse_map(pipeline, umci, sample, shape),
            fused[i].mask,
        ))  # fmt: skip
    write_grid(grid_path, grid_rows)
    say(f"wrote {grid_path} ({grid_path.stat().st_size / 1024:.0f} KB)")

    n_def = len(defective)
    overridden = [name for name in (ENV_CLIP, ENV_SAM) if os.environ.get(name)]
    weights_note = (
        " — **random weights**: plumbing only, the numbers mean nothing."
        if info["random_weights"]
        else f" (weights from {' and '.join(overridden)}, not the shipped ones)."
        if overridden
        else " (the shipped micro-CLIP and micro-SAM)."
    )
    trained = ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in head_seconds.items() if name in trained_heads
    )
    report = [
        "# ClipSAM's ablations in miniature",
        "",
        f"Written by `benchmarks/miniature.py` in {say.seconds:.0f} s "
        f"({torch.get_num_threads()} torch thread(s), {platform.machine()}, torch "
        f"{torch.__version__}). Backbones: the `tiny` preset, CLIP `{info['clip_backbone']}`, "
        f"SAM `{info['sam_backbone']}`{weights_note}",
        "",
        f"Heads train on the miniature world's {len(TRAIN_CATEGORIES)} training categories "
        f"({len(train_data)} images, {args.train_per_category} per category, "
        f"{round(100 * args.defect_rate)}% defective, {args.epochs} epochs, seed {args.seed}) "
        f"and are judged on its {len(HELDOUT_CATEGORIES)} held-out categories "
        f"({', '.join(HELDOUT_CATEGORIES)}: {len(heldout)} images, {n_def} defective), which "
        "no objective ever saw — the paper's cross-dataset protocol in miniature. All values "
        "×100. `training/miniature/protocol.py` holds the protocol; `tests/miniature` turns "
        "the paper's claims into tests on the same data.",
        "",
        "## CLIP stage: the coarse map",
        "",
        "Class means over the held-out categories, on the coarse map at the CLIP input size "
        "(method spec §6; AUPRO up to FPR 0.3).",
        "",
        _table("head", [c for _, c in PIXEL_COLUMNS], clip_rows),
        "",
        f"Training time per head: {trained}.",
        "",
        "## SAM stage: MMR's prompt levels",
        "",
        f"The UMCI head (both paths) on the {n_def} defective held-out images; what the user "
        f"gets: each prediction's mask at the image's size (τ = {default_mmr.tau}). A level "
        "is switched off by its fusion weight λ (default 0.5 each), so the fused map is "
        "(A + Σ λᵢ Mᵢ) / (1 + Σ λᵢ). Region F1 pools 8-connected regions over the images (a "
        "region matches at IoU ≥ 0.2); *no region* is the share of defective images that get "
        "none.",
        "",
        _table("MMR", ["region Dice", "region F1", "no region"], mmr_rows),
        "",
        "## Image score",
        "",
        f"The UMCI head with MMR on all {len(heldout)} held-out images (class means). The score "
        "is w · s + (1 − w) · max of the final map, s being CLIP's global embedding against "
        "the text features (`clip_max`) or AdaCLIP's hybrid semantic fusion (`hsf`).",
        "",
        _table("image score", ["image AUROC", "image F1-max"], image_rows),
        "",
        "## Pictures",
        "",
        f"![held-out images through both heads]({_relative(grid_path, args.out.parent)})",
        "",
        "Rows: held-out images (one per category first). Columns: the input; its ground-truth "
        "outline (green); the training-free head's coarse map; the UMCI head's coarse map; "
        "the UMCI head's final mask after MMR (red) beside the truth (green).",
        "",
        "Run it again: `.venv/bin/python benchmarks/miniature.py` (about 3-5 minutes on 2 free "
        "CPU cores; `--help` for smaller sizes).",
    ]
    return "\n".join(report)


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
