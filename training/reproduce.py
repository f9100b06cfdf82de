"""The published zero-shot protocol in one command, our numbers beside the published ones.

    python -m training.reproduce --mvtec /data/mvtec --visa /data/visa --out runs/repro.md
    python -m training.reproduce --miniature --out runs/miniature.md

Method spec §5 and §7: train UMCI on one dataset's *test* split (3 epochs on MVTec-AD, 15 on
VisA), then test zero-shot on the other dataset's test split through the whole pipeline (CLIP
→ head → MMR/SAM, as ``training.evaluate`` scores it); both directions. The table gives pixel
AUROC / F1-max / AP / PRO per target dataset (class means, ×100) and the published numbers of
§7 under them. PRO is ``aupro@0.3`` (the MVTec reference); ``aupro_aprilgan`` (APRIL-GAN's own
PRO code, which its published numbers used) is given beside it.

Each protocol is one function returning :class:`Run` rows, so another protocol is one more
function and one more option:

- ``published_protocol``: MVTec-AD → VisA and VisA → MVTec-AD (``--mvtec``, ``--visa``);
- ``miniature_protocol`` (``--miniature``, the ``tiny`` preset by default): the miniature
  world (``clipsam.data.world``) written to a temporary folder, its training categories in the
  MVTec-AD layout and its held-out categories in the VisA layout, then the MVTec-AD → VisA
  direction through the same functions, beside the published zero-shot numbers on VisA. Only
  that direction: the held-out categories are the ones no objective (micro-CLIP, micro-SAM,
  the head) ever saw, so testing on them is zero-shot for the whole pipeline; the other
  direction would test on categories the backbones were trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipsam import load_pipeline
from clipsam.config import PRESETS
from clipsam.heads import save_head
from clipsam.logging_setup import configure_logging
from clipsam.metrics import evaluate
from clipsam.pipeline import Pipeline
from clipsam.weights import WeightPaths
from training.datasets import iter_labeled
from training.evaluate import class_mean, json_safe, open_datasets, predict_class
from training.trainer import TrainConfig, prepare_samples, train_head

logger = logging.getLogger("training.reproduce")

#: Method spec §7: published zero-shot pixel metrics (AUROC, F1-max, AP, PRO), ×100; None
#: where a paper gives none. The ClipSAM row is the paper's Table 1, still to be checked
#: against the PDF.
PUBLISHED: dict[str, dict[str, tuple[float | None, ...]]] = {
    "ClipSAM (paper Tab. 1)": {"mvtec": (92.3, 47.8, 45.9, 88.3), "visa": (95.6, 33.1, 26.7, 87.5)},
    "APRIL-GAN": {"mvtec": (87.6, 43.3, 40.8, 44.0), "visa": (94.2, 32.3, 25.7, 86.8)},
    "AnomalyCLIP": {"mvtec": (91.1, None, None, 81.4), "visa": (95.5, None, None, 87.0)},
    "WinCLIP": {"mvtec": (85.1, 31.7, None, 64.6), "visa": (79.6, 14.8, None, 56.8)},
    "SAA+": {"mvtec": (73.2, 37.8, 28.8, 42.8), "visa": (74.0, 27.1, 22.4, 36.8)},
}
#: Our metric keys in the order of the published columns.
COLUMNS = ("pixel_auroc", "pixel_f1_max", "pixel_ap", "aupro")
COLUMN_NAMES = ("pixel AUROC", "pixel F1-max", "pixel AP", "PRO")
#: Method spec §5: epochs when training on each dataset; the miniature world's training set
#: is ~10x smaller than MVTec-AD's test split, so it gets the claim tests' 6 epochs.
DEFAULT_EPOCHS = {"mvtec": 3, "visa": 15, "miniature-train": 6}
DATASET_NAMES = {
    "mvtec": "MVTec-AD",
    "visa": "VisA",
    "miniature-train": "the miniature world's training categories (MVTec-AD layout)",
    "miniature-heldout": "the miniature world's held-out categories (VisA layout)",
}
#: Whose published numbers stand beside a test set that has none of its own.
PUBLISHED_COUNTERPART = {"miniature-heldout": "visa"}
#: Images per category the miniature protocol writes: (normal, defective) in the test split.
MINIATURE_TRAIN_COUNTS = (4, 8)
MINIATURE_HELDOUT_COUNTS = (8, 12)


@dataclass
class Run:
    """One direction of a protocol: trained on ``train``, tested zero-shot on ``test``."""

    train: str  # dataset key, e.g. "mvtec"
    test: str
    epochs: int
    train_images: int
    test_images: int
    metrics: dict[str, float]  # class mean on the test dataset
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    head_version: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Options:
    """What every protocol shares (from the command line)."""

    epochs: int | None = None  # None: DEFAULT_EPOCHS per training dataset
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    max_images: int | None = None  # per class, training and testing alike
    heads_dir: Path | None = None
    progress: bool = True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.reproduce",
        description=(
            "Reproduce the published zero-shot protocol: train UMCI on one dataset's test "
            "split, test on the other dataset, both ways (MVTec-AD <-> VisA); print our pixel "
            "metrics beside the published ones (method spec §7)."
        ),
        epilog="example: python -m training.reproduce --mvtec /data/mvtec --visa /data/visa "
        "--preset fast --out runs/reproduce.md",
    )
    protocol = parser.add_argument_group("the published protocol (both required)")
    protocol.add_argument("--mvtec", type=Path, metavar="PATH", help="MVTec-AD root")
    protocol.add_argument(
        "--visa", type=Path, metavar="PATH", help="VisA root (split_csv/1cls.csv)"
    )
    miniature = parser.add_argument_group("or the same protocol on the miniature world")
    miniature.add_argument(
        "--miniature",
        action="store_true",
        help="train on the world's training categories (written in the MVTec-AD layout), test "
        "zero-shot on its held-out categories (written in the VisA layout)",
    )
    miniature.add_argument(
        "--world-dir",
        type=Path,
        metavar="DIR",
        help="write the world's datasets here and keep them (default: a temporary folder)",
    )
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="pipeline preset (default: fast; tiny with --miniature)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="epochs for both directions (default: 3 on MVTec-AD, 15 on VisA)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE.json|FILE.md",
        help="also write the results as JSON or as a Markdown table",
    )
    parser.add_argument(
        "--heads-dir",
        type=Path,
        metavar="DIR",
        help="save each trained head as DIR/<train>-to-<test>.safetensors",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        metavar="N",
        help="at most N images per class (a quick, smaller run)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="(default: 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="(default: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: torch's; 1 is much faster on a busy machine)",
    )
    parser.add_argument("--cache-dir", help="on-disk CLIP feature cache, reused across runs")
    parser.add_argument(
        "--weights",
        choices=["pretrained", "random"],
        help="override the preset's weights (random: plumbing checks only)",
    )
    parser.add_argument("--no-sam", action="store_true", help="skip SAM (coarse maps only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    for flag, value in (
        ("--epochs", args.epochs),
        ("--max-images", args.max_images),
        ("--threads", args.threads),
    ):
        if value is not None and value < 1:
            print(f"error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.out is not None and args.out.suffix.lower() not in (".json", ".md"):
        print(f"error: --out must end in .json or .md, got {args.out}", file=sys.stderr)
        return 2
    if args.miniature and (args.mvtec is not None or args.visa is not None):
        print("error: give either --miniature or --mvtec and --visa, not both", file=sys.stderr)
        return 2
    if not args.miniature and (args.mvtec is None or args.visa is None):
        print("error: give both --mvtec PATH and --visa PATH (or --miniature)", file=sys.stderr)
        return 2
    if args.world_dir is not None and not args.miniature:
        print("error: --world-dir goes with --miniature", file=sys.stderr)
        return 2
    for flag, path in (("--mvtec", args.mvtec), ("--visa", args.visa)):
        if path is None:
            continue
        if not path.is_dir():
            print(f"error: {flag} {path} is not a folder", file=sys.stderr)
            return 2
    overrides: dict[str, Any] = {"head": "umci", "device": args.device, "seed": args.seed}
    if args.cache_dir:
        overrides["cache_dir"] = args.cache_dir
    if args.weights:
        overrides["weights"] = args.weights
    if args.no_sam:
        overrides["use_sam"] = False
    options = Options(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=args.device, max_images=args.max_images, heads_dir=args.heads_dir,
        progress=not args.quiet,
    )  # fmt: skip
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    preset = args.preset or ("tiny" if args.miniature else "fast")
    pipeline = load_pipeline(preset, weight_paths=WeightPaths.from_env(), **overrides)
    if args.miniature:
        if args.world_dir is not None:
            runs = miniature_protocol(pipeline, args.world_dir, options)
        else:
            with tempfile.TemporaryDirectory(prefix="clipsam-world-") as folder:
                runs = miniature_protocol(pipeline, Path(folder), options)
    else:
        runs = published_protocol(pipeline, args.mvtec, args.visa, options)
    table = format_table(runs)
    print(table)
    if args.out is not None:
        write_results(args.out, runs, table, pipeline)
        print(f"\nwritten to {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------


def published_protocol(pipeline: Pipeline, mvtec: Path, visa: Path, options: Options) -> list[Run]:
    """Method spec §5: MVTec-AD → VisA and VisA → MVTec-AD, each trained on the test split."""
    specs = {"mvtec": f"mvtec:{mvtec}", "visa": f"visa:{visa}"}
    return [
        cross_dataset_run(pipeline, train, test, specs, options)
        for train, test in (("mvtec", "visa"), ("visa", "mvtec"))
    ]


def miniature_protocol(pipeline: Pipeline, root: Path, options: Options) -> list[Run]:
    """The published protocol's MVTec-AD → VisA direction on the miniature world: its training
    categories written under ``root`` in the MVTec-AD layout, its held-out categories in the
    VisA layout, then :func:`cross_dataset_run` as for the real datasets.

    Only this direction (see the module docstring): the held-out categories are unseen by
    every objective, the training categories are not. With ``options.max_images`` only as many
    images are written as can be read back.
    """
    from clipsam.data.world import HELDOUT_CATEGORIES, TRAIN_CATEGORIES, make_world_dataset
    from training.layouts import world_visa

    def capped(counts: tuple[int, int]) -> tuple[int, int]:
        cap = options.max_images
        return counts if cap is None else (min(counts[0], cap), min(counts[1], cap))

    train_good, train_defect = capped(MINIATURE_TRAIN_COUNTS)
    test_good, test_defect = capped(MINIATURE_HELDOUT_COUNTS)
    logger.info("writing the miniature world under %s", root)
    train_root = make_world_dataset(
        root / "train-mvtec", TRAIN_CATEGORIES, n_good=train_good, n_defect=train_defect,
        seed=0, n_train_good=0,
    )  # fmt: skip
    test_root = world_visa(
        root / "heldout-visa", HELDOUT_CATEGORIES, n_good=test_good, n_defect=test_defect, seed=1
    )
    specs = {"miniature-train": f"mvtec:{train_root}", "miniature-heldout": f"visa:{test_root}"}
    return [cross_dataset_run(pipeline, "miniature-train", "miniature-heldout", specs, options)]


def cross_dataset_run(
    pipeline: Pipeline, train: str, test: str, specs: dict[str, str], options: Options
) -> Run:
    """Train a fresh UMCI head on ``specs[train]``'s test split, test it on ``specs[test]``."""
    started = time.perf_counter()
    epochs = options.epochs or DEFAULT_EPOCHS.get(train, 3)
    train_sets = open_datasets([specs[train]], "test", max_images=options.max_images)
    samples = [s for d in train_sets for group in d.classes.values() for s in group]
    logger.info("%s -> %s: training on %d images, %d epochs", train, test, len(samples), epochs)
    prepared = prepare_samples(
        pipeline, iter_labeled(samples), total=len(samples), progress=options.progress
    )
    config = TrainConfig(
        epochs=epochs, batch_size=options.batch_size, lr=options.lr, seed=options.seed,
        device=options.device, progress=options.progress,
    )  # fmt: skip
    head = train_head(
        pipeline, prepared, (), config, init_head=pipeline.new_head(options.seed)
    ).head
    if options.heads_dir is not None:
        save_head(head, options.heads_dir / f"{train}-to-{test}.safetensors")
    pipeline.set_head(head)
    per_class: dict[str, dict[str, float]] = {}
    test_images = 0
    for dataset in open_datasets([specs[test]], "test", max_images=options.max_images):
        for name, class_samples in dataset.classes.items():
            data = predict_class(pipeline, name, class_samples)
            per_class[name] = evaluate(data.maps, data.gt_masks, data.scores, data.labels)
            test_images += len(class_samples)
    mean = class_mean(per_class)
    per_class["mean"] = mean
    return Run(
        train=train, test=test, epochs=epochs, train_images=len(samples),
        test_images=test_images, metrics=mean, per_class=per_class, head_version=head.version,
        seconds=round(time.perf_counter() - started, 1),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def format_table(runs: Sequence[Run]) -> str:
    """One Markdown table per tested dataset: our row, then the published rows (§7)."""
    blocks = []
    header = "| method | " + " | ".join(COLUMN_NAMES) + " | PRO (APRIL-GAN code) |"
    rule = "|---" * (len(COLUMN_NAMES) + 2) + "|"
    for run in runs:
        name = DATASET_NAMES.get(run.test, run.test)
        lines = [
            f"zero-shot on {name} ({run.test_images} images), trained on "
            f"{DATASET_NAMES.get(run.train, run.train)} test split ({run.train_images} images, "
            f"{run.epochs} epoch{'s' * (run.epochs != 1)}, {run.seconds:.0f} s)",
            "",
            header,
            rule,
        ]
        ours = [100 * run.metrics.get(key, math.nan) for key in COLUMNS]
        april = 100 * run.metrics.get("aupro_aprilgan", math.nan)
        lines.append(f"| **ours** | {' | '.join(_cell(v) for v in ours)} | {_cell(april)} |")
        counterpart = PUBLISHED_COUNTERPART.get(run.test, run.test)
        suffix = "" if counterpart == run.test else f", on {DATASET_NAMES[counterpart]}"
        for method, numbers in PUBLISHED.items():
            published = numbers.get(counterpart)
            if published is not None:
                cells = " | ".join(_cell(v) for v in published)
                lines.append(f"| {method}{suffix} | {cells} | – |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_results(path: Path, runs: Sequence[Run], table: str, pipeline: Pipeline) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = pipeline.info()
    if path.suffix.lower() == ".md":
        caption = (
            f"preset `{info['preset']}`, CLIP `{info['clip_backbone']}`, SAM "
            f"`{info['sam_backbone']}`, random weights: {info['random_weights']}"
        )
        path.write_text(f"# Zero-shot reproduction\n\n{caption}\n\n{table}\n", encoding="utf-8")
        return
    payload = {
        "preset": info["preset"],
        "clip_backbone": info["clip_backbone"],
        "sam_backbone": info["sam_backbone"],
        "random_weights": info["random_weights"],
        "published": {m: {d: list(v) for d, v in n.items()} for m, n in PUBLISHED.items()},
        "runs": [json_safe(asdict(run)) for run in runs],
    }
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
