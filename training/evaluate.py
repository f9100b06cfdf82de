"""Evaluate the full pipeline on labelled datasets: metric tables, metrics.json and an HTML report.

    python -m training.evaluate --data visa:/data/visa --preset fast \\
        --head runs/mvtec/head.safetensors --out runs/eval-visa

Every image goes through the pipeline as the backend serves it (CLIP → head → MMR/SAM) and is
scored at its own size, so these are the numbers of the pre-annotations people get; the
held-out numbers of ``training.train`` score the head's coarse maps at the CLIP input size.
Classes are predicted and scored one at a time, so memory holds one class's maps, not a
dataset's (VisA at full size would need >10 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from clipsam.config import PRESETS, overrides_from_json, resolve_config
from clipsam.data import DatasetError, Sample, group_by_category, load_mask
from clipsam.images import ImageError, load_image
from clipsam.logging_setup import configure_logging
from clipsam.metrics import evaluate, format_table, mean_row
from clipsam.weights import ENV_HEAD, WeightPaths
from training import report
from training.datasets import load_samples

if TYPE_CHECKING:
    from clipsam.pipeline import Pipeline

logger = logging.getLogger("training.evaluate")

#: Overlay rows per class in the report.
DEFAULT_OVERLAYS = 8


class UsageError(ValueError):
    """A command-line mistake: reported in one line with exit status 2, before any work."""


@dataclass
class Dataset:
    spec: str
    classes: dict[str, list[Sample]]


@dataclass
class ClassData:
    """One class's predictions at original size, in sample order (what the metrics need)."""

    maps: list[np.ndarray] = field(default_factory=list)
    gt_masks: list[np.ndarray] = field(default_factory=list)
    pred_masks: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=(
            "Run the whole ClipSAM pipeline over labelled datasets and report pixel AUROC/AP/"
            "F1-max, AUPRO (MVTec and APRIL-GAN flavours) and image AUROC/AP/F1-max per class "
            "and their mean; with --out, also metrics.json and an HTML report with curves and "
            "overlays."
        ),
        epilog=(
            "example: python -m training.evaluate --data visa:/data/visa --preset fast "
            "--head runs/mvtec/head.safetensors --out runs/eval-visa"
        ),
    )
    parser.add_argument(
        "--data", action="append", required=True, metavar="SCHEME:PATH",
        help="labelled dataset: mvtec:PATH, visa:PATH or meta:PATH (repeatable; each dataset "
        "gets its own table and mean)",
    )  # fmt: skip
    parser.add_argument(
        "--preset", default="fast", choices=list(PRESETS), help="pipeline preset (default: fast)"
    )
    parser.add_argument(
        "--head", metavar="HEAD.safetensors|none",
        help="head file to evaluate, or 'none' for the training-free head "
        f"(default: ${ENV_HEAD} if set, else the training-free head)",
    )  # fmt: skip
    parser.add_argument(
        "--config", metavar="JSON",
        help='pipeline overrides as JSON or a .json file, e.g. \'{"tau": 0.4, "top_k": 4}\'',
    )  # fmt: skip
    parser.add_argument(
        "--split", default="test", choices=["train", "test"], help="(default: test)"
    )
    parser.add_argument("--categories", help="comma-separated classes (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write DIR/metrics.json, DIR/report.html and DIR/images/ (default: print only)",
    )
    parser.add_argument(
        "--max-images", type=int, metavar="N",
        help="at most N images per class, spread evenly over the class (good and defect alike)",
    )  # fmt: skip
    parser.add_argument(
        "--no-sam", action="store_true", help="skip SAM: masks from the thresholded CLIP map"
    )
    parser.add_argument(
        "--overlays", type=int, default=DEFAULT_OVERLAYS, metavar="K",
        help="overlay rows per class in the report, worst-scoring defects first (default: 8)",
    )  # fmt: skip
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (default: the preset's)")
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help="images per forward (default: the preset's)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        overrides = pipeline_overrides(args)
        resolve_config(args.preset, **overrides)  # unknown fields fail here, before any work
        datasets = open_datasets(args.data, args.split, args.categories, args.max_images)
    except (UsageError, ValueError) as exc:  # DatasetError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from clipsam import load_pipeline  # torch only after the arguments parse: --help skips it
    from clipsam.heads import HeadLoadError

    try:
        pipeline = load_pipeline(args.preset, weight_paths=weight_paths(args), **overrides)
    except HeadLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(pipeline, datasets, args)
    except (DatasetError, ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run(pipeline: Pipeline, datasets: Sequence[Dataset], args: argparse.Namespace) -> int:
    """Predict, score, print; with ``--out`` write metrics.json and the report."""
    info = pipeline.info()
    logger.info(
        "evaluating head %s (%s) on %s, %s split, preset %s, device %s",
        info["head_version"], info["head"], ", ".join(d.spec for d in datasets), args.split,
        info["preset"], info["device"],
    )  # fmt: skip
    total = sum(len(s) for d in datasets for s in d.classes.values())
    started = time.perf_counter()
    bar = tqdm(total=total, desc="evaluating", unit="img", disable=args.quiet)
    results: list[dict[str, dict[str, float]]] = []
    reports: list[report.DatasetReport] = []
    for d_index, dataset in enumerate(datasets):
        per_class: dict[str, dict[str, float]] = {}
        class_reports = []
        for name, samples in dataset.classes.items():
            bar.set_postfix_str(name)
            data = predict_class(pipeline, name, samples, bar)
            per_class[name] = evaluate(data.maps, data.gt_masks, data.scores, data.labels)
            logger.info("%s: %d images, %s", name, len(samples), _summary(per_class[name]))
            if args.out is not None:
                folder = args.out / "images" / f"d{d_index}-{report.slug(name)}"
                class_reports.append(
                    _class_report(folder, args.out, name, samples, data, per_class[name], args)
                )
        per_class["mean"] = class_mean(per_class)
        results.append(per_class)
        reports.append(report.DatasetReport(dataset.spec, class_reports, per_class["mean"]))
    bar.close()
    seconds = time.perf_counter() - started

    for dataset, per_class in zip(datasets, results, strict=True):
        n_images = sum(len(s) for s in dataset.classes.values())
        print(f"\n{dataset.spec} ({n_images} images, {args.split} split)")
        print(format_table(per_class))
    logger.info("%d images in %.1f s (%.2f s/image)", total, seconds, seconds / max(total, 1))
    if args.out is not None:
        _write_outputs(args, pipeline, datasets, results, reports, total, seconds)
    return 0


def predict_class(
    pipeline: Pipeline, name: str, samples: Sequence[Sample], bar: tqdm | None = None
) -> ClassData:
    """Predict a class in batches of the pipeline's batch size; keeps maps at original size."""
    data = ClassData()
    step = max(1, pipeline.config.batch_size)
    for start in range(0, len(samples), step):
        chunk = samples[start : start + step]
        images = [load_image(s.image_path) for s in chunk]
        for sample, image, pred in zip(
            chunk, images, pipeline.predict(images, category=name), strict=True
        ):
            data.maps.append(pred.anomaly_map)
            data.gt_masks.append(load_mask(sample, image.shape[:2]))
            data.pred_masks.append(pred.mask)
            data.scores.append(pred.score)
            data.labels.append(sample.label)
        if bar is not None:
            bar.update(len(chunk))
    _common_size(name, data)
    return data


def class_mean(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The ``"mean"`` row as ``clipsam.metrics.evaluate_per_class`` computes it, for classes
    scored one at a time (see the module docstring)."""
    return mean_row(per_class)


# --------------------------------------------------------------------------------------------
# Arguments → pipeline overrides and datasets
# --------------------------------------------------------------------------------------------


def weight_paths(args: argparse.Namespace) -> WeightPaths:
    """Where the weights are, read from the environment here, at the edge
    (``WeightPaths.from_env``); ``--head none`` drops ``$CLIPSAM_HEAD``, so the training-free
    head is evaluated whatever it names."""
    paths = WeightPaths.from_env()
    return dataclasses.replace(paths, head=None) if args.head == "none" else paths


def pipeline_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``load_pipeline`` keyword overrides from --config, --head, --no-sam, --device, ..."""
    overrides: dict[str, Any] = _read_config(args.config) if args.config else {}
    if args.head == "none":
        overrides["head"] = "none"
        overrides["head_path"] = None
    elif args.head is not None:
        path = Path(args.head).expanduser()
        if not path.is_file():
            raise UsageError(f"head file not found: {path} (pass --head none for the "
                             "training-free head)")  # fmt: skip
        overrides["head_path"] = str(path)
    if args.no_sam:
        overrides["use_sam"] = False
    if args.device:
        overrides["device"] = args.device
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        overrides["batch_size"] = args.batch_size
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {args.max_images}")
    if args.overlays < 0:
        raise UsageError(f"--overlays must be >= 0, got {args.overlays}")
    return overrides


def _read_config(text: str) -> dict[str, Any]:
    source = "--config"
    if not text.lstrip().startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise UsageError(f"--config must be a JSON object or a .json file, got {text!r}")
        source, text = str(path), path.read_text(encoding="utf-8")
    try:
        return overrides_from_json(text, source)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_datasets(
    specs: Sequence[str],
    split: str = "test",
    categories: str | Sequence[str] | None = None,
    max_images: int | None = None,
) -> list[Dataset]:
    """Open every ``scheme:PATH`` (labelled ones only), keep the asked classes, subsample.

    Classes are filtered here rather than by the readers, so ``--categories bottle,candle``
    can name classes of different datasets; a name found in none of them is an error.
    """
    wanted = _names(categories)
    datasets = []
    for spec in dict.fromkeys(specs):  # the same dataset twice would only be counted twice
        groups = group_by_category(load_samples([spec], split=split))
        if wanted is not None:
            groups = {name: s for name, s in groups.items() if name in wanted}
        if "mean" in groups:
            raise UsageError(f'{spec} has a class named "mean", which the average row uses')
        if max_images is not None:
            groups = {name: spread(s, max_images) for name, s in groups.items()}
        datasets.append(Dataset(spec, groups))
    if wanted is not None:
        found = {name for d in datasets for name in d.classes}
        unknown = [name for name in wanted if name not in found]
        if unknown:
            raise UsageError(f"unknown categories {unknown}; {_available(specs, split)}")
        for dataset in datasets:
            if not dataset.classes:
                logger.warning("%s has none of the asked categories; skipping it", dataset.spec)
        datasets = [d for d in datasets if d.classes]
    if not any(d.classes for d in datasets):
        raise UsageError(f"no labelled images in the {split} split of {', '.join(specs)}")
    return datasets


def _names(categories: str | Sequence[str] | None) -> list[str] | None:
    if categories is None:
        return None
    items = categories.split(",") if isinstance(categories, str) else categories
    names = [n.strip() for n in items if n.strip()]
    return list(dict.fromkeys(names)) or None


def _available(specs: Sequence[str], split: str) -> str:
    parts = []
    for spec in dict.fromkeys(specs):
        names = sorted(group_by_category(load_samples([spec], split=split)))
        parts.append(f"{spec} has {', '.join(names) or 'none'}")
    return "; ".join(parts)


def spread(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples at evenly spaced positions: readers sort by defect folder, so
    the first N would often be all defects and leave the image metrics undefined."""
    if len(samples) <= limit:
        return list(samples)
    keep = np.linspace(0, len(samples) - 1, limit).round().astype(int)
    return [samples[i] for i in keep]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _common_size(name: str, data: ClassData) -> None:
    """Bring a class's maps and masks to its most common size, if they differ.

    The metrics need one (N, H, W) stack; a few odd-sized images should not stop a long run.
    """
    shapes = [m.shape for m in data.maps]
    if len(set(shapes)) <= 1:
        return
    height, width = max(set(shapes), key=shapes.count)
    odd = sum(s != (height, width) for s in shapes)
    logger.warning(
        "%s: %d of %d images are not %dx%d (H×W); resizing their maps (bilinear) and masks "
        "(nearest) to it for the metrics", name, odd, len(shapes), height, width,
    )  # fmt: skip
    for i, shape in enumerate(shapes):
        if shape == (height, width):
            continue
        amap = Image.fromarray(data.maps[i]).resize((width, height), Image.Resampling.BILINEAR)
        data.maps[i] = np.asarray(amap, dtype=np.float32)
        for masks in (data.gt_masks, data.pred_masks):
            mask = Image.fromarray(masks[i].astype(np.uint8) * 255)
            masks[i] = np.asarray(mask.resize((width, height), Image.Resampling.NEAREST)) > 127


def _class_report(
    folder: Path,
    out: Path,
    name: str,
    samples: Sequence[Sample],
    data: ClassData,
    metrics: dict[str, float],
    args: argparse.Namespace,
) -> report.ClassReport:
    roc, pr = report.curve_plots(data.maps, data.gt_masks, data.scores, data.labels, metrics)
    chosen = report.overlay_order(data.scores, data.labels, args.overlays)
    rows = report.write_overlays(
        folder, out, samples, data.maps, data.pred_masks, data.gt_masks, data.scores, chosen
    )
    n_defect = sum(1 for y in data.labels if y > 0)
    return report.ClassReport(name, metrics, len(samples), n_defect, roc, pr, rows)


def _write_outputs(
    args: argparse.Namespace,
    pipeline: Pipeline,
    datasets: Sequence[Dataset],
    results: Sequence[dict[str, dict[str, float]]],
    reports: Sequence[report.DatasetReport],
    total: int,
    seconds: float,
) -> None:
    info = pipeline.info()
    run_info = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": info["preset"],
        "head": info["head"],
        "head_version": info["head_version"],
        "head_path": pipeline.config.head_path,
        "clip_backbone": info["clip_backbone"],
        "sam_backbone": info["sam_backbone"],
        "random_weights": info["random_weights"],
        "device": info["device"],
        "data": [d.spec for d in datasets],
        "split": args.split,
        "max_images_per_class": args.max_images,
        "images": total,
        "seconds": round(seconds, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        **run_info,
        "config": info["config"],
        "datasets": [
            {
                "spec": d.spec,
                "images": {name: len(s) for name, s in d.classes.items()},
                "metrics": json_safe(per_class),
            }
            for d, per_class in zip(datasets, results, strict=True)
        ],
    }
    metrics_path = args.out / "metrics.json"
    metrics_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    html_path = report.write_report(args.out, run_info, reports)
    logger.info("wrote %s and %s", metrics_path, html_path)
    print(f"\nmetrics: {metrics_path}\nreport:  {html_path}")


def json_safe(value: Any) -> Any:
    """NaN (an undefined metric) becomes null: strict JSON readers reject NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _summary(values: Mapping[str, float]) -> str:
    keys = ("pixel_auroc", "aupro", "image_auroc")
    return ", ".join(f"{k} {100 * values[k]:.1f}" for k in keys)


if __name__ == "__main__":
    sys.exit(main())
