"""The few-shot normal memory, measured in the miniature world (the test's and benchmark's code).

Good references of a held-out category are rendered with another seed than its test images,
so no test image is in the memory. Pixel AUROC is on the coarse map at the CLIP input size
(class means, as ``protocol.pixel_auroc``); region F1 on what a user sees, the predicted mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from clipsam.fewshot import NormalMemory, blend, build_memory, fewshot_map
from clipsam.pipeline import Pipeline
from training.miniature import protocol
from training.trainer import TrainingSample

#: The seed good references are rendered with (test images use others).
REFERENCE_SEED = 2


def references(category: str, k: int, seed: int = REFERENCE_SEED) -> list[protocol.LabeledImage]:
    """``k`` good images of ``category``."""
    return protocol.world_images([category], k, 0.0, seed=seed)


def memory_of(pipeline: Pipeline, images: Sequence[protocol.LabeledImage]) -> NormalMemory:
    """The memory the backend would build from these good images."""
    samples = protocol.features(pipeline, images)
    refs = [(str(i), s.features["stages"]) for i, s in enumerate(samples)]
    return build_memory(pipeline.clip.backbone_id, images[0].category, refs)


def blended_maps(
    pipeline: Pipeline,
    samples: Sequence[TrainingSample],
    memory: NormalMemory | None,
    flip: bool = False,
) -> torch.Tensor:
    """Calibrated coarse maps of one category's samples, blended with ``memory`` (if any);
    ``flip``: the memory's map enters upside down (a broken blend, for the tests)."""
    category = samples[0].category
    features = [s.features for s in samples]
    maps = pipeline.coarse_maps(features, pipeline.head, pipeline.text_features(category))
    if memory is None:
        return maps.cpu()
    stages = torch.stack([f["stages"] for f in features]).to(pipeline.device)
    fewshot = fewshot_map(stages, memory, pipeline.clip.config.image_size)
    return blend(maps, 1.0 - fewshot if flip else fewshot).cpu()


def pixel_auroc(
    pipeline: Pipeline,
    samples: Sequence[TrainingSample],
    memories: dict[str, NormalMemory | None],
    flip: bool = False,
) -> float:
    """Held-out pixel AUROC, per category then averaged, each blended with its memory."""
    scores = []
    for category in sorted(memories):
        group = [s for s in samples if s.category == category]
        maps = blended_maps(pipeline, group, memories[category], flip).numpy()
        masks = torch.stack([s.mask for s in group]).bool().numpy()
        scores.append(roc_auc_score(masks.ravel(), maps.ravel()))
    return float(np.mean(scores))


def region_f1(
    pipeline: Pipeline,
    images: Sequence[protocol.LabeledImage],
    memories: dict[str, NormalMemory | None],
) -> protocol.RegionScores:
    """Region scores of the predicted masks on the defective images, memories served."""
    predicted, truths = [], []
    saved = {c: pipeline.memories.get(c) for c in memories}
    try:
        for category, memory in sorted(memories.items()):
            if memory is None:
                pipeline.memories.remove(category)
            else:
                pipeline.memories.put(memory)
            group = [d for d in images if d.category == category and d.mask.any()]
            predictions = pipeline.predict([d.image for d in group], category)
            predicted += [p.mask for p in predictions]
            truths += [d.mask for d in group]
    finally:
        for category, old in saved.items():
            pipeline.memories.remove(category)
            if old is not None:
                pipeline.memories.put(old)
    return protocol.region_scores(predicted, truths)
