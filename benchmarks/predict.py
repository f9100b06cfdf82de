"""Per-image predict time of ClipSAM against the stock open_clip + SamPredictor loop.

Random weights (nothing is downloaded), one synthetic image, every case timed in the same
process so that the ratios hold even when other processes share the CPU. It prints numbers; it
never passes or fails. Run ``python benchmarks/predict.py --help`` (see benchmarks/README.md).

Cases
  stock loop    the baseline, per image, batch 1, no caches, text features once per category
                (the 420 prompt sentences through ``model.encode_text`` before the loop, as
                APRIL-GAN's test.py does); ``model.visual.forward_intermediates`` for the tapped
                blocks and the image embedding; the head; ``SamPredictor.set_image`` and one
                ``SamPredictor.predict`` per prompt (point, box, point+box per component: 3·K)
  stock, text per image   the same plus the 420 sentences again for every image (derived)
  ours cold     ``pipeline.predict`` after ``cache.clear_memory()``; text features warm
  ours cached   the same image again after a head swap: head + SAM decoder only
  ours clean    a new image with no component over τ: CLIP + head, SAM skipped

Floor: the FLOPs of one cold image through the stock encoders (CLIP's forward at the preset's
input size + SAM's image encoder, ``torch.utils.flop_counter`` on fake tensors, so nothing is
computed) divided by a matmul peak measured in the same run (bf16 where the CPU has native bf16
and on CUDA, else fp32).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _report  # sibling module: this folder is on sys.path when run as a script
import numpy as np

if TYPE_CHECKING:
    import torch

    from clipsam.config import MMRConfig
    from clipsam.pipeline import Pipeline

ARCHS = ("fast", "paper", "tiny")
#: Quantiles of the coarse map tried as τ, highest first (1 − 10^-4 … 1 − 10^-0.5).
TAU_QUANTILES = tuple(1.0 - 10.0 ** np.linspace(-4.0, -0.5, 36))


# ---- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Seconds per image of pipeline.predict (cold, cached, clean image) against the "
            "stock open_clip + SamPredictor loop, measured in one process with random weights."
        ),
        epilog=(
            "On 2 CPU cores `--arch fast` takes about 4-6 minutes with --repeats 1: the stock "
            "loop alone encodes 420 prompt sentences, runs CLIP ViT-L/14 at 518 px and SAM's "
            "ViT-B encoder. Use --arch tiny to check that the script runs."
        ),
    )
    parser.add_argument("--arch", choices=ARCHS, default="fast", help="pipeline preset")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed runs per case; the median is shown"
    )
    parser.add_argument(
        "--size", type=_size, default="512x512", metavar="HxW", help="input image size"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="our backbones' precision (auto: bf16 on CUDA and bf16-capable CPUs); stock is fp32",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=4,
        metavar="N",
        help="also time N new images in one predict call (throughput); 0 skips it",
    )
    parser.add_argument("--category", default="widget", help="category word for the prompts")
    parser.add_argument(
        "--components",
        type=int,
        default=5,
        metavar="K",
        help="pick τ so that about K components pass (1..8; top_k caps K at 8)",
    )
    parser.add_argument(
        "--text-cold",
        action="store_true",
        help="also time ours cold with the text features cleared (first image of a category); "
        "without it that row is derived: ours cold + the measured text-feature time",
    )
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="run both loops once on a 64x64 image before timing (costs one more full pass)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (md)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not 1 <= args.components <= 8:
        parser.error("--components must be between 1 and 8 (top_k caps K at 8)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x512, got {text!r}") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError("the image must be at least 32x32")
    return height, width


# ---- timing helpers -----------------------------------------------------------------------
class Clock:
    """perf_counter with a CUDA synchronise on both ends, and named stage totals."""

    def __init__(self, device: torch.device) -> None:
        import torch

        self._cuda = device.type == "cuda"
        self._torch = torch
        self.stages: Counter[str] = Counter()

    def now(self) -> float:
        if self._cuda:
            self._torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.now()
        yield
        self.stages[name] += self.now() - start


def install_counters(*pipelines: Pipeline) -> Counter[str]:
    """Forward hooks on each pipeline's modules (ours, and the stock loop's fp32 backbones):
    images through CLIP / SAM's encoder, decoder calls, all into one counter."""
    calls: Counter[str] = Counter()

    def clip_hook(module: Any, args: Any, output: Any) -> None:
        calls["clip_images"] += int(args[0].shape[0])

    def encoder_hook(module: Any, args: Any, output: Any) -> None:
        calls["sam_images"] += int(args[0].shape[0])

    def decoder_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        calls["decoder_calls"] += 1
        calls["prompts"] += int(kwargs["sparse_prompt_embeddings"].shape[0])

    for pipeline in pipelines:
        pipeline.clip.visual.conv1.register_forward_hook(clip_hook)
        if pipeline.sam is not None:
            pipeline.sam.sam.image_encoder.register_forward_hook(encoder_hook)
            pipeline.sam.sam.mask_decoder.register_forward_hook(decoder_hook, with_kwargs=True)
    return calls


@dataclasses.dataclass
class Case:
    name: str
    seconds: list[float] = dataclasses.field(default_factory=list)
    calls: Counter[str] = dataclasses.field(default_factory=Counter)  # of the last run
    cuda_peak: int = 0
    derived: str = ""  # how the number was derived, when it was not timed directly

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# ---- the stock loop -----------------------------------------------------------------------
class StockLoop:
    """What reference code does per image, with open_clip's and segment-anything's own calls.

    ``points`` (K, P, 2) XY and ``boxes`` (K, 4) XYXY are the prompts our pipeline computes for
    the image, so that both loops decode the same K components.
    """

    def __init__(
        self, pipeline: Pipeline, stock: Pipeline, points: np.ndarray, boxes: np.ndarray
    ) -> None:
        """``stock``: the same seeded backbones loaded in fp32 with stock attention (ours hold
        their matmul weights in bf16); its CLIP and SAM run here, ``pipeline``'s head."""
        import open_clip
        from segment_anything import SamPredictor

        assert stock.sam is not None and not stock.sam.fast_attention
        self.pipeline, self.points, self.boxes = pipeline, points, boxes
        self.model = stock.clip.model
        config = pipeline.clip.config
        # Squash to S×S like the pipeline (open_clip's default crops the centre of non-squares).
        self.transform = open_clip.image_transform(
            config.image_size, is_train=False, resize_mode="squash"
        )
        self.tokenizer = open_clip.get_tokenizer(config.clip_model)
        # Stock segment-anything: its own attention (ours runs SDPA), fp32, no autocast.
        self.predictor = SamPredictor(stock.sam.sam)
        self.indices = [layer - 1 for layer in config.layers]  # open_clip counts from 0
        self.own_components = 0  # components of the stock map, for the report

    def encode_text(self, category: str) -> torch.Tensor:
        """The category's (2, E) text features: 420 sentences through ``model.encode_text``."""
        import torch
        import torch.nn.functional as F

        from clipsam.prompts import prompt_sentences

        model, device = self.model, self.pipeline.device
        with torch.no_grad():
            rows = []
            for sentences in prompt_sentences(category):
                tokens = self.tokenizer(sentences).to(device)
                rows.append(model.encode_text(tokens, normalize=True).mean(0))
            return F.normalize(torch.stack(rows), dim=-1)

    def __call__(
        self, image: np.ndarray, category: str, clock: Clock, text: torch.Tensor | None = None
    ) -> np.ndarray:
        """One image; ``text`` computed once per category, or None: encode it here."""
        import torch
        import torch.nn.functional as F
        from PIL import Image

        from clipsam.heads import coarse_map
        from clipsam.refine import find_components

        pipeline = self.pipeline
        model, device = self.model, pipeline.device
        mmr = pipeline.config.mmr
        with torch.no_grad():
            if text is None:
                with clock.stage(STOCK_TEXT_STAGE):
                    text = self.encode_text(category)
            with clock.stage("CLIP: visual.forward_intermediates"):
                pixels = self.transform(Image.fromarray(image))[None].to(device)
                out = model.visual.forward_intermediates(
                    pixels, indices=self.indices, output_fmt="NLC"
                )
                stages = torch.stack(out["image_intermediates"], dim=1)
                embedding = F.normalize(out["image_features"], dim=-1)
            with clock.stage("head + map + components"):
                logits = pipeline.head({"stages": stages, "global": embedding}, text)
                small = coarse_map(logits, pipeline.clip.config.image_size)
                amap = resize_map(small[0], image.shape[:2])
                torch.softmax(100.0 * embedding @ text.T, dim=-1)  # the image-level CLIP score
                self.own_components = len(find_components(amap, mmr))
        with clock.stage("SAM: set_image (encoder)"):
            self.predictor.set_image(image)
        levels: list[list[tuple[np.ndarray, float]]] = [[], [], []]
        with clock.stage("SAM: predict x 3K"):
            labels = np.ones(self.points.shape[1], dtype=np.int64)
            for point, box in zip(self.points, self.boxes, strict=True):
                masks, scores, _ = self.predictor.predict(
                    point_coords=point, point_labels=labels, multimask_output=True
                )
                best = int(np.argmax(scores))
                levels[0].append((masks[best], float(scores[best])))
                masks, scores, _ = self.predictor.predict(box=box, multimask_output=False)
                levels[1].append((masks[0], float(scores[0])))
                masks, scores, _ = self.predictor.predict(
                    point_coords=point, point_labels=labels, box=box, multimask_output=False
                )
                levels[2].append((masks[0], float(scores[0])))
        with clock.stage("fuse"):
            fused = amap.astype(np.float32).copy()
            for weight, level in zip(mmr.lambdas, levels, strict=True):
                if level:
                    soft = np.max([min(max(s, 0.0), 1.0) * m for m, s in level], axis=0)
                    fused += weight * soft
            fused /= 1.0 + sum(mmr.lambdas)
        return np.clip(fused, 0.0, 1.0)


STOCK_TEXT_STAGE = "text: encode_text, 420 sentences"


def stock_encoder_flops(pipeline: Pipeline, stock: StockLoop) -> dict[str, float]:
    """FLOPs of one image through the stock encoders, counted by ``FlopCounterMode`` on fake
    tensors (shapes only: nothing is computed, nothing copied). MHA's native fast path and the
    fused SDPA kernels are invisible to the counter, so they are switched off while it counts
    (the math is the same)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    clip_config = pipeline.clip.config
    indices = [layer - 1 for layer in clip_config.layers]
    encoder = stock.predictor.model.image_encoder
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    flops: dict[str, float] = {}
    try:
        with (
            FakeTensorMode(allow_non_fake_inputs=True),
            torch.no_grad(),
            sdpa_kernel([SDPBackend.MATH]),
        ):
            size = clip_config.image_size
            with FlopCounterMode(display=False) as counter:
                stock.model.visual.forward_intermediates(
                    torch.empty(1, 3, size, size, device=pipeline.device),
                    indices=indices,
                    output_fmt="NLC",
                )
            flops["clip"] = float(counter.get_total_flops())
            size = int(encoder.img_size)
            with FlopCounterMode(display=False) as counter:
                encoder(torch.empty(1, 3, size, size, device=pipeline.device))
            flops["sam"] = float(counter.get_total_flops())
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return flops


def matmul_peak(device: torch.device, size: int, repeats: int = 3) -> tuple[float, torch.dtype]:
    """FLOP/s of the best of ``repeats`` ``size``³ matmuls: bf16 on CUDA and on CPUs with native
    bf16 (``clipsam.precision.cpu_has_bf16``), else fp32 (bf16 is emulated there)."""
    import torch

    from clipsam.precision import cpu_has_bf16

    native = device.type == "cuda" or cpu_has_bf16()
    dtype = torch.bfloat16 if native else torch.float32
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    clock = Clock(device)
    best = float("inf")
    with torch.no_grad():
        a @ b  # warm-up
        for _ in range(repeats):
            start = clock.now()
            a @ b
            best = min(best, clock.now() - start)
    return 2.0 * size**3 / best, dtype


def resize_map(amap: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """(S, S) → (H, W) bilinear, clamped to [0, 1]: what the pipeline does to its coarse map."""
    import torch.nn.functional as F

    size = (int(shape[0]), int(shape[1]))
    resized = F.interpolate(amap[None, None].float(), size=size, mode="bilinear")
    return resized[0, 0].clamp_(0.0, 1.0).cpu().numpy()


# ---- choosing τ for a noise map -----------------------------------------------------------
def choose_tau(amap: np.ndarray, mmr: MMRConfig, target: int) -> tuple[float, float, int]:
    """The highest quantile of ``amap`` whose components number closest to ``target``.

    Returns (τ, quantile, components over the minimum area, before top_k).
    """
    from clipsam.refine import find_components

    uncapped = dataclasses.replace(mmr, top_k=1 << 30)
    best: tuple[float, float, float, int] | None = None  # (distance, τ, q, n)
    for quantile in TAU_QUANTILES:
        tau = float(np.quantile(amap, quantile))
        count = len(find_components(amap, dataclasses.replace(uncapped, tau=tau)))
        distance = abs(count - target) + (0 if 0 < count <= mmr.top_k else 100)
        if best is None or distance < best[0]:
            best = (distance, tau, float(quantile), count)
    assert best is not None
    return best[1], best[2], best[3]


# ---- the benchmark ------------------------------------------------------------------------
def synthetic_image(size: tuple[int, int], category: str, seed: int) -> np.ndarray:
    from clipsam.data import render_synthetic_image

    rng = np.random.default_rng(seed)
    image, _ = render_synthetic_image(category, rng, size, ("scratch", "spot"))
    return image


def run(args: argparse.Namespace) -> str:
    import torch

    import clipsam
    from clipsam.images import image_hash
    from clipsam.refine import find_components, prompts_for

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    start = time.perf_counter()
    pipeline = clipsam.load_pipeline(
        args.arch, weights="random", head="umci", device=args.device, precision=args.precision
    )
    load_s = time.perf_counter() - start
    if pipeline.sam is None:
        raise SystemExit(f"preset {args.arch!r} runs without SAM; nothing to compare")
    stock_backbones = clipsam.load_pipeline(
        args.arch, weights="random", head="none", device=args.device, precision="fp32",
        fast_attention=False,
    )  # fmt: skip
    device = pipeline.device
    clock = Clock(device)
    calls = install_counters(pipeline, stock_backbones)
    image = synthetic_image(args.size, args.category, seed=0)
    clean_image = synthetic_image(args.size, args.category, seed=1)
    info = pipeline.info()

    # Text features once (every "ours" case below runs with them warm), then our coarse map
    # of the image with the current head, to pick τ so that a handful of components pass.
    start = clock.now()
    text = pipeline.clip.text_features(args.category).to(device)
    text_s = clock.now() - start
    features = pipeline.clip_features([image], [image_hash(image)])
    amap = resize_map(pipeline.coarse_maps(features, pipeline.head, text)[0], image.shape[:2])
    base_tau = pipeline.config.mmr.tau
    tau, quantile, natural = choose_tau(amap, pipeline.config.mmr, args.components)
    mmr = dataclasses.replace(pipeline.config.mmr, tau=tau)
    pipeline.config = dataclasses.replace(pipeline.config, mmr=mmr)
    components = find_components(amap, mmr)
    points, boxes = prompts_for(components, (image.shape[0], image.shape[1]), mmr)
    k = len(components)
    if k == 0:
        raise SystemExit(f"no τ lets components through on this image (tried {quantile:.4%})")
    stock = StockLoop(pipeline, stock_backbones, points, boxes)
    # The stock loop's text features, once per category (as APRIL-GAN's test.py does): timed
    # once here; the per-image-text row adds this time to the loop.
    start = clock.now()
    stock_text = stock.encode_text(args.category)
    stock_text_s = clock.now() - start
    clean_config = dataclasses.replace(pipeline.config, mmr=dataclasses.replace(mmr, tau=1.0))
    heads = [pipeline.head, pipeline.new_head(seed=1)]
    heads[1].load_state_dict(heads[0].state_dict())  # an equal head: the same K after the swap

    say(f"# ClipSAM predict benchmark: `{args.arch}` preset, random weights")
    say()
    say(f"- CLIP backbone: `{info['clip_backbone']}`")
    say(f"- SAM backbone: `{info['sam_backbone']}`")
    say(f"- head: `{info['head']}` (random init, seed {pipeline.config.seed})")
    say(
        f"- device: `{device}`, precision `{info['precision']}` (stock: float32), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )
    say(
        f"- image: synthetic `{args.category}` {args.size[0]}x{args.size[1]} "
        "(clipsam.data.render_synthetic_image, 2 painted defects)"
    )
    say(
        f"- τ = {tau:.4f} (the {quantile:.4%} quantile of our coarse map; preset τ {base_tau}), "
        f"set via dataclasses.replace(pipeline.config.mmr, tau=τ): {natural} components over "
        f"the minimum area, K = {k} prompted (top_k {mmr.top_k})"
    )
    say(
        f"- load_pipeline: {load_s:.1f} s; text features for the category: {text_s:.2f} s "
        "(computed once up front, so the `ours` rows run with them warm)"
    )
    say(f"- repeats: {args.repeats} per case (median shown), cases interleaved per repeat")
    if not args.warmup:
        say("- no warm-up pass (`--warmup` adds one); our CLIP path ran once to pick τ")

    if args.warmup:
        tiny = synthetic_image((64, 64), args.category, seed=2)
        warm_points = np.full((1, 1, 2), 16.0, dtype=np.float32)
        warm_stock = StockLoop(
            pipeline, stock_backbones, warm_points, np.asarray([[0, 0, 32, 32]], "f4")
        )
        warm_stock(tiny, args.category, Clock(device), stock_text)
        pipeline.predict([tiny], args.category)
        pipeline.cache.clear_memory()
        say("- warm-up: both loops ran once on a 64x64 image before timing")

    def timed(case: Case, call: Callable[[], Any]) -> Any:
        calls.clear()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        begin = clock.now()
        result = call()
        case.seconds.append(clock.now() - begin)
        case.calls = Counter(calls)
        if device.type == "cuda":
            case.cuda_peak = max(case.cuda_peak, torch.cuda.max_memory_allocated(device))
        return result

    cases = {
        name: Case(name)
        for name in (
            "stock loop, text once per category (baseline): CLIP + head + SamPredictor, "
            "3·K predict calls",
            "stock loop, text per image (420 sentences every image; secondary)",
            "ours cold (text warm): CLIP + SAM encoder + head + 3 decoder calls",
            "ours cold, text cold (first image of a category)",
            "ours cached, after a head swap: head + 3 decoder calls",
            "ours clean image, cold: CLIP + head, SAM skipped",
        )
    }
    stock_case, stock_text_case, cold, text_cold, cached, clean = cases.values()
    batch_case = Case(f"ours cold, {args.batch} new images in one call: per image")
    batch_images = [
        synthetic_image(args.size, args.category, seed=10 + i) for i in range(args.batch)
    ]
    if args.batch:
        cases[batch_case.name] = batch_case
    sam_used: dict[str, bool] = {}
    stock_clock = Clock(device)
    for repeat in range(args.repeats):
        stock_clock.stages.clear()
        timed(stock_case, lambda: stock(image, args.category, stock_clock, stock_text))
        pipeline.cache.clear_memory()
        (prediction,) = timed(cold, lambda: pipeline.predict([image], args.category))
        sam_used[cold.name] = prediction.sam_used
        if args.text_cold:
            pipeline.cache.clear_memory()
            pipeline.clip._text_cache.clear()  # private: the only way to forget text features
            (prediction,) = timed(text_cold, lambda: pipeline.predict([image], args.category))
            sam_used[text_cold.name] = prediction.sam_used
        pipeline.set_head(heads[(repeat + 1) % 2])
        (prediction,) = timed(cached, lambda: pipeline.predict([image], args.category))
        sam_used[cached.name] = prediction.sam_used
        tuned, pipeline.config = pipeline.config, clean_config
        pipeline.cache.clear_memory()
        (prediction,) = timed(clean, lambda: pipeline.predict([clean_image], args.category))
        sam_used[clean.name] = prediction.sam_used
        pipeline.config = tuned
        if args.batch:
            pipeline.cache.clear_memory()
            predictions = timed(batch_case, lambda: pipeline.predict(batch_images, args.category))
            batch_case.seconds[-1] /= args.batch
            sam_used[batch_case.name] = any(p.sam_used for p in predictions)
    stock_text_case.seconds = [stock_case.median + stock_text_s]
    stock_text_case.calls = stock_case.calls
    stock_text_case.derived = (
        "derived: the baseline stock loop + the stock text-feature time (by stage, below): "
        "what no reference loop does, the 420 sentences encoded again for every image"
    )
    sam_used[stock_text_case.name] = True
    if not args.text_cold:
        text_cold.seconds = [cold.median + text_s]
        text_cold.calls = cold.calls
        text_cold.derived = (
            "derived: ours cold + the text-feature time above (a first call: one-time "
            "overheads included; --text-cold times it)"
        )
        sam_used[text_cold.name] = sam_used[cold.name]

    # The floor: the stock encoders' FLOPs for one image over the matmul peak, same run.
    flops = stock_encoder_flops(pipeline, stock)
    peak, peak_dtype = matmul_peak(device, 1024 if args.arch == "tiny" else 4096)
    floor_s = sum(flops.values()) / peak

    say()
    say(render_table(list(cases.values()), stock_case.median, sam_used, device.type == "cuda"))
    say()
    say(
        "speed-up = baseline stock seconds / case seconds (higher is better; the baseline, "
        "text features once per category, = 1.00x)."
    )
    say(
        "CLIP / SAM enc = images through each encoder, decoder = mask-decoder calls "
        "(prompts in brackets), counted by forward hooks on the shared modules."
    )
    for case in (stock_text_case, text_cold):
        if case.derived:
            say(f"`{case.name}` is {case.derived}.")
    say()
    size = 1024 if args.arch == "tiny" else 4096
    dtype_name = str(peak_dtype).removeprefix("torch.")
    say("Against the baseline and the floor:")
    say()
    say(
        f"- floor: {sum(flops.values()) / 1e9:,.1f} GFLOP per cold image through the stock "
        f"encoders (CLIP {flops['clip'] / 1e9:,.1f} at {pipeline.clip.config.image_size} px + "
        f"SAM encoder {flops['sam'] / 1e9:,.1f}; torch.utils.flop_counter) / matmul peak "
        f"{peak / 1e9:,.1f} GFLOP/s ({dtype_name}, {size}³, {torch.get_num_threads()} threads, "
        f"best of 3, this run) = {floor_s:.3f} s"
    )
    say(f"- ours cold / baseline stock loop: {cold.median / stock_case.median:.2f}")
    say(f"- ours cold / floor: {cold.median / floor_s:.2f}")
    say(f"- baseline stock loop / floor: {stock_case.median / floor_s:.2f}")
    say()
    say("Stock loop, by stage (last repeat; text once per category, timed before the loop):")
    say()
    total = sum(stock_clock.stages.values())
    for name, seconds in stock_clock.stages.items():
        say(f"- {name}: {seconds:.2f} s ({seconds / total:.0%})")
    say(f"- (once per category, not in the baseline: {STOCK_TEXT_STAGE}: {stock_text_s:.2f} s)")
    if stock.own_components != k:
        dtype = pipeline.config.cache_dtype
        say(
            f"- note: on the stock map (fp32 tokens; our cache stores {dtype}) "
            f"{stock.own_components} components pass τ; the stock loop prompts SAM with our "
            f"K = {k} so that both loops do the same work"
        )
    say()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    say(f"Peak RSS of the process: {peak_rss:,.0f} MiB")
    if device.type == "cuda":
        peak = max(case.cuda_peak for case in cases.values()) / 2**20
        say(f"torch.cuda.max_memory_allocated: {peak:,.0f} MiB (largest over the cases)")
    return "\n".join(lines) + "\n"


def render_table(cases: list[Case], stock_s: float, sam_used: dict[str, bool], cuda: bool) -> str:
    header = "| case | s / image (median) | speed-up vs stock | CLIP | SAM enc | decoder | SAM |"
    rule = "|---|---:|---:|---:|---:|---:|:---:|"
    if cuda:
        header += " peak CUDA MiB |"
        rule += "---:|"
    rows = [header, rule]
    for case in cases:
        calls = case.calls
        decoder = f"{calls['decoder_calls']} ({calls['prompts']})"
        name = case.name + (" *" if case.derived else "")
        row = (
            f"| {name} | {case.median:.3f} | {stock_s / case.median:.2f}x "
            f"| {calls['clip_images']} | {calls['sam_images']} | {decoder} "
            f"| {'yes' if sam_used.get(case.name, True) else 'no'} |"
        )
        if cuda:
            row += f" {case.cuda_peak / 2**20:,.0f} |"
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv), echo=False)


if __name__ == "__main__":
    sys.exit(main())
