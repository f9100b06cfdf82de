"""Few-shot normal memory: held-out pixel AUROC and region F1 with k good references.

The shipped micro-CLIP (``tiny``, ``weights="pretrained"``) on the miniature world's held-out
categories, which no objective ever saw: for each k, a memory of k good images of the category
(rendered with another seed than the test images) is blended into the training-free head's
calibrated map (``clipsam.fewshot``). Pixel AUROC: coarse map at the CLIP input size, per
category; region F1 / Dice: the predicted masks on the defective images, SAM off unless
``--sam`` (training/miniature/protocol.py). Never pass/fail.
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
    parser.add_argument("--categories", default="", help="comma-separated; default: held-out")
    parser.add_argument("--per-category", type=int, default=16, help="test images per category")
    parser.add_argument("--ks", default="0,1,2,4,8", help="good references per category")
    parser.add_argument("--sam", action="store_true", help="region scores with micro-SAM")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    import clipsam
    from clipsam.data.world import HELDOUT_CATEGORIES
    from training.miniature import fewshot, protocol

    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    categories = categories or list(HELDOUT_CATEGORIES)
    ks = [int(k) for k in args.ks.split(",")]
    pipeline = clipsam.load_pipeline("tiny", weights="pretrained", use_sam=args.sam)
    test = protocol.world_images(categories, args.per_category, 0.6, seed=1)
    samples = protocol.features(pipeline, test)
    header = "| k | pixel AUROC | " + " | ".join(categories) + " | region F1 | region Dice |"
    lines = [
        "# Few-shot normal memory on unseen miniature categories",
        "",
        f"micro-CLIP, training-free head, {args.per_category} test images per category "
        f"(60 % defective), SAM {'on' if args.sam else 'off'}; k good references per category.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    build = []
    for k in ks:
        started = time.perf_counter()
        memories = {
            c: fewshot.memory_of(pipeline, fewshot.references(c, k)) if k else None
            for c in categories
        }
        build.append(time.perf_counter() - started)
        per = [fewshot.pixel_auroc(pipeline, samples, {c: memories[c]}) for c in categories]
        regions = fewshot.region_f1(pipeline, test, memories)
        lines.append(
            f"| {k} | **{sum(per) / len(per):.3f}** | "
            + " | ".join(f"{a:.3f}" for a in per)
            + f" | {regions.f1:.3f} | {regions.dice:.3f} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    lines += [
        "",
        "Pixel AUROC: class means of the coarse map (224 px); region F1 at IoU 0.2, pooled over "
        "the defective images. Memory build (features included): "
        + ", ".join(f"k={k}: {s:.1f} s" for k, s in zip(ks, build, strict=True))
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
