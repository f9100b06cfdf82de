"""Train a head on datasets on disk and write it to a folder.

    python -m training.train --data mvtec:/data/mvtec --preset fast --out runs/mvtec-head

The published zero-shot protocol trains on one dataset's *test* split and evaluates on another
dataset (train on MVTec-AD for VisA and vice versa), hence ``--split test`` by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clipsam.config import all_fields
from clipsam.logging_setup import configure_logging

logger = logging.getLogger("training.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a ClipSAM head (UMCI by default) on cached CLIP features.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data", action="append", required=True, metavar="SCHEME:PATH",
        help="dataset to train on: mvtec:PATH, visa:PATH or meta:PATH/meta.json (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="folder for head + metrics")
    parser.add_argument("--preset", default="fast", help="paper, fast or tiny")
    parser.add_argument("--head", default="umci", choices=["umci", "linear"])
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--categories", help="comma-separated classes (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--holdout", type=float, default=0.2, help="held-out fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--init-head", type=Path, help="start from this head file")
    parser.add_argument("--cache-dir", help="on-disk feature cache (reused across runs)")
    parser.add_argument("--weights", choices=["pretrained", "random"], help="override the preset")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help=f"any config field, e.g. --set scales=1,3 (fields: {', '.join(all_fields())})",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # torch, open_clip and scikit-learn only after the arguments parse: --help answers at once.
    from clipsam import load_pipeline
    from clipsam.heads import load_head, save_head
    from clipsam.metrics import format_table
    from clipsam.weights import WeightPaths
    from training.datasets import iter_labeled, load_samples
    from training.trainer import TrainConfig, prepare_samples, split_holdout, train_head

    configure_logging()
    overrides = dict(_parse_set(item) for item in args.set)
    overrides.update(head=args.head, device=args.device, seed=args.seed)
    if args.cache_dir:
        overrides["cache_dir"] = args.cache_dir
    if args.weights:
        overrides["weights"] = args.weights
    pipeline = load_pipeline(args.preset, weight_paths=WeightPaths.from_env(), **overrides)
    categories = args.categories.split(",") if args.categories else None
    samples = load_samples(args.data, split=args.split, categories=categories)
    logger.info("%d samples from %s", len(samples), ", ".join(args.data))
    prepared = prepare_samples(
        pipeline, iter_labeled(samples), total=len(samples), progress=not args.quiet
    )
    train, held_out = split_holdout(prepared, args.holdout, seed=args.seed)
    init = load_head(args.init_head, pipeline.clip.backbone_id) if args.init_head else None
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=args.device, progress=not args.quiet,
    )  # fmt: skip
    result = train_head(pipeline, train, held_out, config, init_head=init)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "data": args.data,
        "split": args.split,
        "train_samples": len(train),
        "held_out_samples": len(held_out),
        "epochs": args.epochs,
        "losses": result.losses,
        "seconds": round(result.seconds, 2),
        "metrics": result.per_class,
        "thresholds": result.head.thresholds.to_dict() if result.head.thresholds else None,
    }
    version = save_head(result.head, args.out / "head.safetensors", extra=summary)
    summary["version"] = version
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    if result.per_class:
        print(format_table(result.per_class))
    if result.head.thresholds is not None:
        t = result.head.thresholds
        print(f"calibrated thresholds: pixel {t.pixel}, image {t.image} ({t.source})")
    print(f"head {version} written to {args.out / 'head.safetensors'}")
    return 0


def _parse_set(item: str) -> tuple[str, object]:
    key, sep, raw = item.partition("=")
    if not sep:
        raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
    if "," in raw:
        return key, tuple(_scalar(part) for part in raw.split(","))
    return key, _scalar(raw)


def _scalar(raw: str) -> object:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


if __name__ == "__main__":
    sys.exit(main())
