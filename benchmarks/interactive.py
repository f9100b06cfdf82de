"""Seconds per smart-tool click: ours (the cached SAM embedding) against Label Studio's own SAM
backend (``SamPredictor.set_image`` + ``predict`` on every click).

Each click goes the whole way but HTTP and the image fetch: a Label Studio context in percent
→ prompts → mask → the brush RLE result. Ours runs ``Pipeline.segment`` on an image whose
embedding is cached (what every click after the first costs, and the first click on a
pre-annotated image); the baseline is segment-anything's stock ``SamPredictor`` on the same
seeded SAM loaded with our fast paths off, in fp32, re-encoding the image on every click as Label
Studio's SAM example does. Random weights, one synthetic image, one process, cases
interleaved; p50/p95 over the clicks. Never pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import _report  # sibling module: this folder is on sys.path when run as a script
import numpy as np

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Defect"/></KeyPointLabels>
  <RectangleLabels name="drag" toName="image" smart="true"><Label value="Defect"/></RectangleLabels>
  <BrushLabels name="brush" toName="image"><Label value="Defect"/></BrushLabels>
</View>"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__
    )
    parser.add_argument("--arch", choices=("fast", "paper", "tiny"), default="fast")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", default="1024x1024", help="HxW of the image clicked on")
    parser.add_argument("--clicks", type=int, default=40, help="timed clicks per cached case")
    parser.add_argument("--baseline-clicks", type=int, default=6, help="timed baseline clicks")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    return parser.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(args: argparse.Namespace) -> str:
    import torch
    from segment_anything import SamPredictor

    import clipsam
    from clipsam.data import render_synthetic_image
    from clipsam.images import image_hash
    from labelstudio.interactive import interactive_config, read_context
    from labelstudio.interactive_result import mask_prediction

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    height, width = (int(v) for v in args.size.lower().split("x"))
    started = time.perf_counter()
    pipeline = clipsam.load_pipeline(args.arch, weights="random", device=args.device)
    load_s = time.perf_counter() - started
    assert pipeline.sam is not None
    # Stock segment-anything: the same seeded weights in fp32 with its own attention and decoder
    # (ours hold the encoder's matmul weights in bf16 under bf16 autocast).
    stock = clipsam.load_pipeline(
        args.arch, weights="random", device=args.device, precision="fp32",
        fast_attention=False,
    ).sam  # fmt: skip
    assert stock is not None and not stock.fast_attention
    predictor = SamPredictor(stock.sam)
    image, _ = render_synthetic_image(
        "widget", np.random.default_rng(0), (height, width), ("scratch", "spot")
    )
    target = interactive_config(CONFIG)
    rng = np.random.default_rng(1)

    def context(kind: str) -> dict:  # type: ignore[type-arg]
        """A click (or 2 points + box) at a random place, as Label Studio sends it."""
        x, y = rng.uniform(10, 80, 2)
        size = {"original_width": width, "original_height": height}
        point = {"type": "keypointlabels", "from_name": "click", "is_positive": True, **size,
                 "value": {"x": x, "y": y, "keypointlabels": ["Defect"]}}  # fmt: skip
        if kind == "click":
            return {"result": [point]}
        negative = {**point, "is_positive": False,
                    "value": {"x": x + 8, "y": y + 8, "keypointlabels": ["Defect"]}}  # fmt: skip
        box = {"type": "rectanglelabels", "from_name": "drag", **size,
               "value": {"x": x - 5, "y": y - 5, "width": 15, "height": 15,
                         "rectanglelabels": ["Defect"]}}  # fmt: skip
        return {"result": [box, point, negative]}

    def ours(kind: str) -> tuple[float, float]:
        """(seconds for the click, of which SAM: embedding if not cached, prompts, decoder)."""
        prompts = read_context(context(kind), target)
        sync()
        start = time.perf_counter()
        segment = pipeline.segment(image, *prompts.in_pixels(width, height))
        sync()
        sam_s = time.perf_counter() - start
        mask_prediction(segment.mask, segment.iou, target, "Defect", "v")
        return time.perf_counter() - start, sam_s

    def baseline() -> tuple[float, float]:
        points, labels, _ = read_context(context("click"), target).in_pixels(width, height)
        sync()
        start = time.perf_counter()
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(
            point_coords=points, point_labels=labels, multimask_output=True
        )
        sync()
        sam_s = time.perf_counter() - start
        best = int(np.argmax(scores))
        mask_prediction(masks[best], float(scores[best]), target, "Defect", "v")
        return time.perf_counter() - start, sam_s

    def first_click() -> tuple[float, float]:
        pipeline.cache.clear_memory()
        seconds = ours("click")
        assert pipeline.cache.get(pipeline.sam.backbone_id, image_hash(image)) is not None
        return seconds

    first_click(), baseline(), ours("both")  # warm-up; leaves the image cached
    names = (
        "ours, first click (embeds the image)",
        "ours, cached: 1 click",
        "ours, cached: 2 points + box",
        "baseline (set_image + predict)",
    )
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    per_round = max(1, args.clicks // max(1, args.baseline_clicks))
    for _ in range(max(1, args.baseline_clicks)):  # interleaved, so load on the CPU hits all
        times[names[3]].append(baseline())
        for _ in range(per_round):
            times[names[1]].append(ours("click"))
            times[names[2]].append(ours("both"))
        times[names[0]].append(first_click())
    base = statistics.median(t for t, _ in times[names[3]])
    info = pipeline.info()
    lines = [
        f"# Seconds per smart-tool click: `{args.arch}` preset "
        f"(SAM {pipeline.config.sam.sam_model}), random weights, {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        f"One {height}x{width} image; context → prompts → mask → brush RLE (no HTTP, no fetch). "
        f"Ours: precision `{info['precision']}`; baseline: stock segment-anything, fp32. "
        f"Pipeline load {load_s:.1f} s. SAM: the model's part; the rest is the brush RLE, "
        "whose cost grows with the mask's runs (random weights give ragged masks).",
        "",
        "| case | clicks | p50 s | p95 s | SAM p50 s | SAM p95 s | speed-up vs baseline (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        total, sam = [t for t, _ in values], [s for _, s in values]
        p50 = statistics.median(total)
        lines.append(
            f"| {name} | {len(values)} | {p50:.3f} | {percentile(total, 95):.3f} "
            f"| {statistics.median(sam):.3f} | {percentile(sam, 95):.3f} | {base / p50:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
