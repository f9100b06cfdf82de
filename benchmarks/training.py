"""Retraining speed: seconds per epoch per 100 images, on cached CLIP tokens.

Training never runs a backbone per epoch: each image's tokens come from the feature cache, so an
epoch is the head's forward and backward only. This times exactly that for the preset's real
head shapes (random tokens of the right size, random weights), on CPU or CUDA. Never pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _report  # sibling module: this folder is on sys.path when run as a script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__
    )
    parser.add_argument("--arch", choices=("fast", "paper", "tiny"), default="fast")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--images", type=int, default=100, help="cached samples per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after a warm-up)")
    parser.add_argument("--head", choices=("umci", "linear"), default="umci")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    import torch

    import clipsam
    from clipsam.precision import autocast_dtype
    from training.trainer import TrainConfig, TrainingSample, train_head

    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = clipsam.load_pipeline(
        args.arch, weights="random", head=args.head, use_sam=False, device=args.device
    )
    clip = pipeline.clip
    size, tokens = clip.config.image_size, clip.grid * clip.grid
    dtype = getattr(torch, pipeline.config.cache_dtype)
    generator = torch.Generator().manual_seed(0)
    samples = []
    for index in range(args.images):
        features = {
            "stages": torch.randn(len(clip.config.layers), tokens, clip.width, generator=generator),
            "global": torch.randn(clip.embed_dim, generator=generator),
            "vv": torch.randn(tokens, clip.embed_dim, generator=generator),
        }
        mask = torch.zeros(size, size)
        if index % 5:  # four in five images have a defect
            y, x = (int(v) for v in torch.randint(0, size - 40, (2,), generator=generator))
            mask[y : y + 40, x : x + 40] = 1
        samples.append(
            TrainingSample({k: v.to(dtype) for k, v in features.items()}, mask, "widget")
        )
    device = torch.device(args.device)
    mixed = autocast_dtype("auto", device)
    precisions = {"fp32": "fp32"}
    if mixed is not None:
        precisions[f"{str(mixed).removeprefix('torch.')} autocast (the default here)"] = "auto"
    per_100: dict[str, float] = {}
    result = None
    for label, precision in precisions.items():
        config = TrainConfig(epochs=1, progress=False, device=args.device, precision=precision)
        train_head(pipeline, samples[:8], config=config)  # warm-up: text features, allocations
        start = time.perf_counter()
        config = TrainConfig(
            epochs=args.epochs, progress=True, device=args.device, precision=precision
        )
        result = train_head(pipeline, samples, config=config)
        per_100[label] = (time.perf_counter() - start) / args.epochs / args.images * 100
    assert result is not None
    params = sum(p.numel() for p in result.head.parameters())
    report = (
        f"# Retraining speed: `{args.arch}` preset, {args.head} head ({params / 1e6:.1f} M "
        f"parameters), {args.device}, torch {torch.__version__}, {torch.get_num_threads()} "
        "threads\n\n"
        f"- tokens per image: {len(clip.config.layers)} stages x {tokens} x {clip.width} "
        f"({pipeline.config.cache_dtype} in the cache), input {size} px, batch 8; "
        f"{args.images} images, {args.epochs} epoch(s) timed; no backbone runs per epoch\n"
    )
    for label, seconds in per_100.items():
        report += (
            f"- {label}: **{seconds:.1f} s per epoch per 100 images** "
            f"({per_100['fp32'] / seconds:.2f}x fp32)\n"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
