"""What the annotator sees: regions and Dice of a head at its own threshold, on held-out data.

Pixel AUROC ignores the threshold, so a head whose maps never cross τ scores well by it while
returning nothing. These metrics threshold the way serving does: the coarse map, normalised so
the head's calibrated threshold sits at 0.5 (``clipsam.calibration``; uncalibrated heads as
they are), then MMR's component step (``A > τ``, minimum area, top-K by peak). Held-out
samples are cached features with masks at the CLIP input size, so SAM is not run.

``head_region_metrics(pipeline, head, samples)`` gives, for a promotion gate:

* ``region_dice``: Dice of the predicted regions' union with the mask, mean over defective
  images (0 for an image with no region);
* ``region_precision`` / ``region_recall`` / ``region_f1``: a predicted region is right when it
  touches a defect pixel; a ground-truth defect (8-connected component) is found when a region
  touches it; F1 of the two (0 when nothing is predicted);
* ``defect_images_with_regions`` / ``good_images_with_regions``: the fraction of defective (of
  good) images that get at least one region. A head with 0 for the first returns nothing on the
  held-out defects and must never be promoted (:func:`returns_regions`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from clipsam.config import MMRConfig
from clipsam.heads import AnomalyHead
from clipsam.pipeline import Pipeline
from clipsam.refine import find_components
from training.trainer import HeldOutMaps, TrainingSample, held_out_maps

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

REGION_KEYS = (
    "region_dice",
    "region_precision",
    "region_recall",
    "region_f1",
    "defect_images_with_regions",
    "good_images_with_regions",
)


def region_metrics(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], mmr: MMRConfig | None = None
) -> dict[str, float]:
    """The metrics above for (calibrated) maps in [0, 1] and boolean masks of the same shapes."""
    mmr = mmr or MMRConfig()
    dice: list[float] = []
    predicted = predicted_right = truths = truths_found = 0
    defect_hits = goods = good_hits = 0
    for amap, mask in zip(maps, masks, strict=True):
        mask = np.asarray(mask, dtype=bool)
        if amap.shape != mask.shape:
            raise ValueError(f"map {amap.shape} and mask {mask.shape} differ in shape")
        regions = [c.mask for c in find_components(np.asarray(amap), mmr)]
        union = np.logical_or.reduce(regions) if regions else np.zeros_like(mask)
        predicted += len(regions)
        predicted_right += sum(bool((r & mask).any()) for r in regions)
        if mask.any():
            dice.append(2.0 * float((union & mask).sum()) / float(union.sum() + mask.sum()))
            defect_hits += bool(regions)
            labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            truths += count
            truths_found += len(np.unique(labels[union & mask]))  # background never in there
        else:
            goods += 1
            good_hits += bool(regions)
    defects = len(dice)
    precision = predicted_right / predicted if predicted else 0.0
    recall = truths_found / truths if truths else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "region_dice": float(np.mean(dice)) if dice else float("nan"),
        "region_precision": precision,
        "region_recall": recall if truths else float("nan"),
        "region_f1": f1 if truths else float("nan"),
        "defect_images_with_regions": defect_hits / defects if defects else float("nan"),
        "good_images_with_regions": good_hits / goods if goods else float("nan"),
    }


@torch.inference_mode()
def head_region_metrics(
    pipeline: Pipeline,
    head: AnomalyHead,
    samples: Sequence[TrainingSample],
    held: HeldOutMaps | None = None,
) -> dict[str, float]:
    """:func:`region_metrics` of ``head`` on held-out ``samples``, at its own threshold;
    ``held``: its maps on them, already computed (:func:`training.trainer.held_out_maps`)."""
    held = held if held is not None else held_out_maps(pipeline, head, samples)
    maps = [m.numpy() for group in held.calibrated(head.thresholds).values() for m in group]
    masks = [m.numpy() for group in held.masks.values() for m in group]
    return region_metrics(maps, masks, pipeline.config.mmr)


def returns_regions(metrics: dict[str, float]) -> bool:
    """Whether a head returned any region on the held-out defects (false also when there were
    no defective held-out images to tell)."""
    value = metrics.get("defect_images_with_regions", float("nan"))
    return bool(value > 0)
