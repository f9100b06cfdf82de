"""Calibrate the training-free head once on the miniature world; ship the thresholds.

The training-free head has no held-out data of its own, so its operating points are chosen
once per shipped backbone on images of the world's *training* categories (never the held-out
ones), the way a trained head's are chosen on its held-out data (``training.trainer.
calibrate_head``: pixel τ at F1-max over the raw coarse maps' pixels, image threshold at F1-max
of the pipeline's image scores). They go into ``clipsam/model_weights/zero_shot_thresholds.json``
keyed by backbone id, with the weights file's sha256, and ``clipsam.pipeline.fresh_head`` gives
them to every training-free head on that backbone.

    python -m training.miniature.thresholds            # the tiny preset's shipped weights
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import clipsam
from clipsam.atomic import atomic_write_text
from clipsam.calibration import ZERO_SHOT_THRESHOLDS_FILE, Thresholds
from clipsam.data.world import TRAIN_CATEGORIES
from clipsam.logging_setup import configure_logging
from clipsam.weights import MICRO_CLIP_WEIGHTS, WeightPaths
from training.miniature import protocol
from training.trainer import calibrate_head

logger = logging.getLogger(__name__)

#: Images per training category and their defect rate (seeded: the same table every run).
PER_CATEGORY = 12
DEFECT_RATE = 0.6
SEED = 20


def calibrate(per_category: int = PER_CATEGORY, seed: int = SEED) -> tuple[str, Thresholds]:
    """(backbone id, thresholds) of the tiny preset's training-free head on the world."""
    pipeline = clipsam.load_pipeline(
        "tiny", weights="pretrained", use_sam=False, weight_paths=WeightPaths.from_env()
    )
    head = pipeline.new_head(kind="none")
    head.thresholds = None  # chosen anew, never from an older table
    images = protocol.world_images(TRAIN_CATEGORIES, per_category, DEFECT_RATE, seed)
    samples = protocol.features(pipeline, images)
    thresholds = calibrate_head(pipeline, head, samples)
    if thresholds is None:
        raise RuntimeError("no thresholds: the calibration images have one kind of label")
    source = (
        f"training-free head calibrated once on the miniature world: {len(samples)} images of "
        f"its {len(TRAIN_CATEGORIES)} training categories ({per_category} each, "
        f"{DEFECT_RATE:.0%} defective, seed {seed}); pixel and image thresholds at F1-max, "
        f"coarse maps at {pipeline.clip.config.image_size} px, no SAM"
    )
    return pipeline.clip.backbone_id, Thresholds(thresholds.pixel, thresholds.image, source)


def write(backbone_id: str, thresholds: Thresholds, weights: Path, table: Path) -> None:
    entries: dict[str, Any] = {}
    if table.is_file():
        entries = json.loads(table.read_text(encoding="utf-8"))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    entries[backbone_id] = {**thresholds.to_dict(), "weights": weights.name, "sha256": digest}
    atomic_write_text(table, json.dumps(entries, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-category", type=int, default=PER_CATEGORY)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=ZERO_SHOT_THRESHOLDS_FILE)
    args = parser.parse_args(argv)
    configure_logging()
    backbone_id, thresholds = calibrate(args.per_category, args.seed)
    write(backbone_id, thresholds, MICRO_CLIP_WEIGHTS, args.out)
    print(json.dumps({backbone_id: thresholds.to_dict()}, indent=2))


if __name__ == "__main__":
    main()
