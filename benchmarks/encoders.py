"""Frozen encoders, stock against our fast paths: seconds per image and numeric difference.

SAM's image encoder: segment-anything's own attention vs SDPA with the rel-pos bias folded
into the queries and keys (ours), SDPA with it materialised as a mask (the route before) and,
where our CPU fp32 path takes it, the global blocks' row-chunked attention
(``clipsam.sam_fast``), each in fp32 and under bf16 autocast. CLIP: open_clip's
``forward_intermediates`` vs our tapped forward (``ClipBackbone.encode_images``), fp32 and bf16.
On CPU, both fast paths also with int8 dynamic quantisation of their linear layers
(``quantize="int8"``, ``clipsam.quantize``; fp32 around them).
Random weights, one process, cases interleaved; prints a markdown table, never passes or fails.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _report  # sibling module: this folder is on sys.path when run as a script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__
    )
    parser.add_argument("--arch", choices=("fast", "paper", "tiny"), default="fast")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=1, help="images per forward")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    parser.add_argument("--skip-clip", action="store_true", help="only the SAM encoder")
    parser.add_argument(
        "--skip-bf16",
        action="store_true",
        help="no bf16 autocast rows (on CPUs without native bf16 it is emulated and slow)",
    )
    parser.add_argument(
        "--skip-int8", action="store_true", help="no int8 dynamic quantisation rows (CPU only)"
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time the compiled routes (flex_attention with the rel-pos bias as a score "
        "modification; torch.compile of the whole SAM encoder, and of its windowed blocks "
        "beside the row-chunked global ones; both encoders with Inductor's freezing under "
        "bf16): several minutes of compiling",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    return parser.parse_args(argv)


#: The row of the pipeline's own bf16 encoders (``clipsam.precision.hold_weights_for_autocast``).
HELD = "ours, bf16 autocast, matmul weights held in bf16 (a bf16 pipeline's encoders)"

#: Inductor's freezing: the frozen weights become constants, pre-packed for the matmul kernels.
FREEZING = {"freezing": True}


def interleaved(
    calls: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None]
) -> dict[str, tuple[float, Any]]:
    """Median seconds and last result of each call, after one warm-up each; the repeats are
    interleaved (every case once per round), so load from other processes hits all alike."""
    results = {name: call() for name, call in calls.items()}  # warm-up (allocations, kernels)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            results[name] = call()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(seconds[name]), results[name]) for name in calls}


def run(args: argparse.Namespace) -> str:
    import torch

    import clipsam
    from clipsam import sam_fast
    from clipsam.precision import autocast
    from clipsam.sam_fast import (
        disable_fast_attention,
        enable_flex_attention,
        enable_mask_attention,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    half = torch.bfloat16
    pipeline = clipsam.load_pipeline(args.arch, weights="random", device=args.device,
                                     precision="fp32")  # fmt: skip
    assert pipeline.sam is not None
    # The same seeded weights with int8 linear layers in both encoders (CPU only).
    int8 = None
    if device.type == "cpu" and not args.skip_int8:
        int8 = clipsam.load_pipeline(args.arch, weights="random", device=args.device,
                                     precision="fp32", quantize="int8")  # fmt: skip
        assert int8.sam is not None
    # The same seeded weights as a bf16 pipeline loads them: matmul weights held in bf16.
    held = None
    if not args.skip_bf16:
        held = clipsam.load_pipeline(args.arch, weights="random", device=args.device,
                                     precision="bf16")  # fmt: skip
        assert held.sam is not None
    lines = [
        f"# Encoders: `{args.arch}` preset, random weights, {device}, batch {args.batch}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        "| encoder | path | s / image | vs stock | max abs diff | rel. L2 diff |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def row(encoder: str, path: str, seconds: float, stock: float, diff: tuple[float, float]):
        per_image = seconds / args.batch
        lines.append(
            f"| {encoder} | {path} | {per_image:.3f} | {stock / seconds:.2f}x "
            f"| {diff[0]:.2e} | {diff[1]:.2e} |"
        )
        print(lines[-1], flush=True)

    def difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        a, b = a.float(), b.float()
        return float((a - b).abs().max()), float((a - b).norm() / a.norm())

    fast_encoder = pipeline.sam.sam.image_encoder
    stock_encoder = copy.deepcopy(fast_encoder)
    disable_fast_attention(stock_encoder)
    size = pipeline.sam.img_size
    pixels = torch.randn(args.batch, 3, size, size, device=device)
    mask_encoder = copy.deepcopy(stock_encoder)
    enable_mask_attention(mask_encoder)
    cases: dict[str, tuple[Any, ...]] = {
        "segment-anything, fp32 (stock)": (stock_encoder, None),
        "segment-anything, bf16 autocast": (stock_encoder, half),
        "SDPA + materialised rel-pos mask in every block, fp32": (mask_encoder, None),
        "SDPA, rel-pos folded into q·kᵀ in every block, fp32": (fast_encoder, None, False),
        "ours, fp32: global blocks row-chunked, windows folded": (fast_encoder, None),
        "SDPA + materialised rel-pos mask, bf16 autocast (before)": (mask_encoder, half),
        "ours, bf16 autocast: rel-pos folded into q·kᵀ": (fast_encoder, half),
    }
    if held is not None:
        cases[HELD] = (held.sam.sam.image_encoder, half)
    if args.skip_bf16:
        cases = {name: case for name, case in cases.items() if case[1] is None}
    if int8 is not None:
        cases["ours, int8 linear layers (quantize='int8')"] = (
            int8.sam.sam.image_encoder, None)  # fmt: skip
    if args.compiled:  # each compiles on its warm-up call (about 40-100 s each on CPU)
        flex_encoder = copy.deepcopy(stock_encoder)
        enable_flex_attention(flex_encoder)
        compiled = torch.compile(fast_encoder, dynamic=False)
        frozen = torch.compile(fast_encoder, dynamic=False, options=FREEZING)
        windowed_compiled = copy.deepcopy(fast_encoder)
        for index, block in enumerate(windowed_compiled.blocks):
            if block.window_size > 0:
                windowed_compiled.blocks[index] = torch.compile(block, dynamic=False)
        cases["flex_attention, bias as score_mod (compiled), fp32"] = (flex_encoder, None)
        cases["torch.compile(encoder), rel-pos folded in every block, fp32"] = (
            compiled, None, False)  # fmt: skip
        cases["torch.compile(windowed blocks), global blocks row-chunked, fp32"] = (
            windowed_compiled, None)  # fmt: skip
        if not args.skip_bf16:
            cases["flex_attention, bias as score_mod (compiled), bf16 autocast"] = (
                flex_encoder, half)  # fmt: skip
            cases["torch.compile(encoder), rel-pos folded, bf16 autocast"] = (compiled, half)
            cases["torch.compile(encoder, freezing), rel-pos folded, bf16 autocast"] = (
                frozen, half)  # fmt: skip

    def sam_call(
        encoder: Any, dtype: torch.dtype | None, chunked: bool = True
    ) -> Callable[[], Any]:
        def call() -> Any:
            threshold = sam_fast.CHUNKED_MIN_TOKENS
            sam_fast.CHUNKED_MIN_TOKENS = threshold if chunked else 1 << 62
            try:
                with autocast(device, dtype):
                    return encoder(pixels)
            finally:
                sam_fast.CHUNKED_MIN_TOKENS = threshold

        return call

    with torch.inference_mode():
        results = interleaved(
            {name: sam_call(*case) for name, case in cases.items()}, args.repeats, sync
        )
    stock_s, stock_out = results["segment-anything, fp32 (stock)"]
    for name, (seconds, out) in results.items():
        row(f"SAM {pipeline.config.sam.sam_model}", name, seconds, stock_s,
            difference(stock_out, out))  # fmt: skip

    if not args.skip_clip:
        clip = pipeline.clip
        indices = [layer - 1 for layer in clip.config.layers]
        image_size = clip.config.image_size
        pixels = torch.randn(args.batch, 3, image_size, image_size, device=device)
        with torch.inference_mode():

            def stock_clip() -> Any:
                out = clip.visual.forward_intermediates(pixels, indices=indices, output_fmt="NLC")
                return torch.stack(out["image_intermediates"], dim=1)  # CLS already dropped

            def ours(dtype: torch.dtype | None, backbone: Any) -> Callable[[], Any]:
                def call() -> Any:
                    backbone.autocast_dtype = dtype
                    return backbone.encode_images(pixels)["stages"]

                return call

            calls = {"open_clip forward_intermediates, fp32 (stock)": stock_clip}
            calls["ours (SDPA, taps, vv), fp32"] = ours(None, clip)
            if not args.skip_bf16:
                calls["ours (SDPA, taps, vv), bf16 autocast"] = ours(half, clip)
            if held is not None:
                calls[HELD] = ours(half, held.clip)
            if int8 is not None:
                calls["ours, int8 linear layers (quantize='int8')"] = ours(None, int8.clip)
            if args.compiled and not args.skip_bf16:  # compiles on its warm-up call
                forward = torch.compile(clip._encode_images, dynamic=False, options=FREEZING)

                def compiled_clip() -> Any:
                    with autocast(device, half):
                        return forward(pixels)["stages"]

                calls["ours, torch.compile(freezing), bf16 autocast"] = compiled_clip
            clip_cases = interleaved(calls, args.repeats, sync)
        stock_s, stock_out = clip_cases["open_clip forward_intermediates, fp32 (stock)"]
        for name, (seconds, out) in clip_cases.items():
            row(clip.config.clip_model, name, seconds, stock_s, difference(stock_out, out))
    lines += [
        "",
        "Diffs are against the stock fp32 output of the same weights (SAM: the image embedding; "
        "CLIP: the tapped stage tokens). Our CLIP row also computes the value-value tokens of "
        "the last blocks, which the stock forward does not. int8 rows: the same seeded weights "
        "with their linear layers quantised (per output channel; activations per call), fp32 "
        "elsewhere.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
