"""SAM's mask decoder, stock against ours: the three MMR prompt levels for K components.

This is what a cached re-prediction pays on the SAM side. Stock: segment-anything's
``MaskDecoder`` (K copies of the image tokens, attention over all 4096 of them, ConvTranspose
upscaling), fp32 or under bf16 autocast. Ours (``clipsam.sam_fast``): shared image tokens until
they diverge, attention folded into the prompt tokens (``clipsam.attention``), sub-pixel
upscaling, fp32 or with the decoder held in bf16. Same weights (random), same embedding (SAM's
encoder on a synthetic image), same prompts; one process, cases interleaved. Never pass/fail.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import _report  # sibling module: this folder is on sys.path when run as a script
import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__
    )
    parser.add_argument("--arch", choices=("fast", "paper", "tiny"), default="fast")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--components", type=int, default=5, help="K prompts per level")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    import contextlib

    import torch

    import clipsam
    from clipsam.data import render_synthetic_image
    from clipsam.precision import autocast
    from clipsam.sam_fast import disable_fast_decoder

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    half = torch.bfloat16
    pipeline = clipsam.load_pipeline(args.arch, weights="random", device=args.device,
                                     precision="fp32")  # fmt: skip
    ours = pipeline.sam
    assert ours is not None
    stock = copy.deepcopy(ours)
    disable_fast_decoder(stock.sam.mask_decoder)
    image, _ = render_synthetic_image(
        "widget", np.random.default_rng(0), (512, 512), ("scratch", "spot")
    )
    shape = (image.shape[0], image.shape[1])
    embedding = ours.embed([image])
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 400, (args.components, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(20, 100, corners.shape)], axis=1)
    points = np.stack([corners + 10, corners + 15], axis=1).astype(np.float32)  # (K, 2, 2)
    levels = (
        {"points": points, "multimask": True},
        {"boxes": boxes.astype(np.float32)},
        {"points": points, "boxes": boxes.astype(np.float32)},
    )
    cases = {  # name → (backbone, decoder dtype, autocast dtype)
        "segment-anything, fp32 (stock)": (stock, None, None),
        "segment-anything, bf16 autocast": (stock, None, half),
        "ours, fp32": (ours, None, None),
        "ours, decoder held in bf16 (pipeline default on bf16 hardware)": (ours, half, None),
    }

    def decode_levels(backbone, weights_dtype, autocast_dtype):  # type: ignore[no-untyped-def]
        backbone.set_precision(weights_dtype)
        context = autocast(device, autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with context:
            return [backbone.decode(embedding, shape, **level) for level in levels]

    seconds: dict[str, list[float]] = {name: [] for name in cases}
    outputs = {name: decode_levels(*case) for name, case in cases.items()}  # also warms up
    for _ in range(args.repeats):
        for name, case in cases.items():
            sync()
            start = time.perf_counter()
            decode_levels(*case)
            sync()
            seconds[name].append(time.perf_counter() - start)
    base_name = "segment-anything, fp32 (stock)"
    base_s = statistics.median(seconds[base_name])
    lines = [
        f"# SAM mask decoder: `{args.arch}` preset ({pipeline.config.sam.sam_model}), random "
        f"weights, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        f"Three MMR levels (points with multimask, boxes, points + boxes), K = {args.components} "
        f"prompts each, one {shape[0]}x{shape[1]} image; median of {args.repeats}.",
        "",
        "| decoder | ms / 3 levels | speed-up vs stock fp32 | mask pixels equal to stock fp32 "
        "| max IoU diff |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, times in seconds.items():
        median = statistics.median(times)
        equal = np.mean(
            [
                float((got[0] == want[0]).float().mean())
                for got, want in zip(outputs[name], outputs[base_name], strict=True)
            ]
        )
        iou = max(
            float((got[1] - want[1]).abs().max())
            for got, want in zip(outputs[name], outputs[base_name], strict=True)
        )
        lines.append(
            f"| {name} | {median * 1e3:.1f} | {base_s / median:.2f}x | {equal:.4%} | {iou:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
