"""Defect types on unseen categories: zero-shot, then after k corrected regions per type.

On each held-out miniature category (micro-CLIP and micro-SAM, ``tiny`` with
``weights="pretrained"``), a project labels seven defect types. Teaching images (k per type,
one defect each) play the corrections: they fit the type classifier as the retrain job does
(``training.defect_types``), from the drawn regions and from the regions the pipeline predicts
on those images, labelled by the drawn region they lie on. Other images of the same category
are the test:

  true regions       accuracy on the generator's own defect masks (the classifier alone)
  predicted regions  accuracy on the regions the annotator receives: each predicted region that
                     overlaps a true defect is typed by the pipeline (``Pipeline.type_regions``,
                     the /predict path) and checked against that defect's type

k = 0 is zero-shot: CLIP against prompts built from the label names. Two breaks teach the
largest k wrongly: "labels shuffled" permutes the labels among the teaching regions (what a
classifier that ignores the regions would score), "labels rotated" names every type after the
next one (a consistent but wrong teacher: accuracy near 0 shows it follows its teaching).
Never pass or fail; about 2-3 minutes on one free CPU core.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import _report  # sibling module: this folder is on sys.path when run as a script
import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4, 8],
                        help="corrected regions per type")  # fmt: skip
    parser.add_argument("--test-per-type", type=int, default=6, metavar="N")
    parser.add_argument("--categories", nargs="+", default=None,
                        help="default: every held-out category")  # fmt: skip
    parser.add_argument("--no-sam", action="store_true", help="predicted regions without MMR")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    import torch

    from clipsam import load_pipeline
    from clipsam.data.world import HELDOUT_CATEGORIES
    from training.defect_types import (
        fit_types,
        predicted_examples,
        type_accuracy,
        type_examples,
    )
    from training.miniature.typed import TYPE_LABELS, typed_samples

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipeline = load_pipeline("tiny", weights="pretrained", use_sam=not args.no_sam)
    labels = list(TYPE_LABELS)
    categories = args.categories or list(HELDOUT_CATEGORIES)
    max_k = max(args.ks)
    rows: dict[str, dict[str, list[float]]] = {}
    for c_index, category in enumerate(categories):
        teach = typed_samples(category, max_k, seed=1000 + args.seed + c_index)
        test = typed_samples(category, args.test_per_type, seed=2000 + args.seed + c_index)
        teach_ex = {label: [] for label in labels}  # type: dict[str, list]
        for sample, label in teach:  # as the retrain job does: drawn and predicted regions
            masks = {label: sample.mask}
            teach_ex[label].append(
                type_examples(pipeline, sample.image, masks, category)
                + predicted_examples(pipeline, sample.image, masks, category)
            )
        test_ex = []
        for sample, label in test:
            test_ex += type_examples(pipeline, sample.image, {label: sample.mask}, category)
        predictions = pipeline.predict([s.image for s, _ in test], category)
        cases: list[tuple[str, int, str]] = [(f"k = {k} per type", k, "") for k in args.ks]
        cases += [(f"k = {max_k}, labels {how}", max_k, how) for how in ("shuffled", "rotated")]
        for name, k, how in cases:
            chosen = [e for label in labels for image in teach_ex[label][:k] for e in image]
            names = [e.label for e in chosen]
            if how == "shuffled":
                names = list(np.random.default_rng(args.seed + c_index).permutation(names))
            elif how == "rotated":
                names = [labels[(labels.index(n) + 1) % len(labels)] for n in names]
            chosen = [replace(e, label=str(n)) for e, n in zip(chosen, names, strict=True)]
            classifier = fit_types(chosen) if k else None
            true_acc = type_accuracy(pipeline, classifier, test_ex, labels)
            pipeline.head.type_classifier = classifier
            pipeline.type_regions([s.image for s, _ in test], predictions, labels, category)
            hits, matched = [], 0
            for (sample, label), prediction in zip(test, predictions, strict=True):
                overlapping = [r for r in prediction.regions if (r.mask & sample.mask).any()]
                matched += bool(overlapping)
                hits += [r.label == label for r in overlapping]
            row = rows.setdefault(name, {"true": [], "pred": [], "matched": []})
            row["true"].append(true_acc or 0.0)
            row["pred"].append(float(np.mean(hits)) if hits else float("nan"))
            row["matched"].append(matched / len(test))
        print(f"{category}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    pipeline.head.type_classifier = None
    lines = [
        "# Defect types on unseen miniature categories",
        "",
        f"{len(labels)} types ({', '.join(labels)}); chance {1 / len(labels):.3f}. Categories: "
        f"{', '.join(categories)}; {args.test_per_type} test images per type and category; "
        f"micro-CLIP + micro-SAM, training-free head, MMR {'off' if args.no_sam else 'on'}.",
        "",
        "| corrections | true regions | predicted regions | test images with a region on "
        "their defect |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {np.mean(row['true']):.3f} | {np.nanmean(row['pred']):.3f} | "
            f"{np.mean(row['matched']):.0%} |"
        )
    lines += ["", f"({time.perf_counter() - started:.0f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return _report.main(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
