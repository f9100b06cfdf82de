"""ClipSAM's claims, checked on the miniature world's held-out categories (issue 11).

Each claim has a bar set from measurement with a margin (figures in docs/miniature.md), and a
companion test that breaks the method on purpose and checks that the same bar then rejects it:
the claim tests can fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clipsam.images import image_hash
from clipsam.pipeline import resize_map
from clipsam.refine import find_components, prompts_for
from training.miniature import protocol

pytestmark = pytest.mark.slow

#: Held-out pixel AUROC the training-free head must reach (measured: see docs/miniature.md).
TRAINING_FREE_BAR = 0.80
#: UMCI trained on the training categories must beat the training-free and the linear head
#: on the held-out categories by at least this much pixel AUROC.
UMCI_MARGIN = 0.01
#: MMR must raise the mean Dice of the returned masks over the thresholded coarse map by this.
MMR_DICE_GAIN = 0.03


def swapped(pipeline, monkeypatch):
    """Break: the normal and abnormal prompt rows trade places."""
    original = pipeline.text_features
    monkeypatch.setattr(pipeline, "text_features", lambda c, w=(): original(c, w).flip(0))


# ---- the CLIP stage ----------------------------------------------------------------------


def test_training_free_head_localizes_defects_on_unseen_categories(micro, heldout_features):
    assert protocol.pixel_auroc(micro, micro.head, heldout_features) >= TRAINING_FREE_BAR


def test_swapped_prompts_fall_below_that_bar(micro, heldout_features, monkeypatch):
    swapped(micro, monkeypatch)
    assert protocol.pixel_auroc(micro, micro.head, heldout_features) < 0.5


def test_umci_beats_the_training_free_and_the_linear_head_on_unseen_categories(
    micro, heldout_features, umci, linear
):
    scores = {
        name: protocol.pixel_auroc(micro, head, heldout_features)
        for name, head in (("umci", umci), ("linear", linear), ("none", micro.head))
    }
    assert scores["umci"] >= scores["none"] + UMCI_MARGIN, scores
    assert scores["umci"] >= scores["linear"] + UMCI_MARGIN, scores


def test_umci_on_shuffled_labels_does_not_beat_the_training_free_head(
    micro, heldout_features, train_features
):
    """Break: every training image gets another image's mask."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train_features))
    shuffled = [
        dataclasses.replace(sample, mask=train_features[int(j)].mask)
        for sample, j in zip(train_features, order, strict=True)
    ]
    head = protocol.train(micro, shuffled, "umci")
    assert (
        protocol.pixel_auroc(micro, head, heldout_features)
        < protocol.pixel_auroc(micro, micro.head, heldout_features) + UMCI_MARGIN
    )


# ---- the SAM stage -----------------------------------------------------------------------


def _mmr_gain(micro, head, items, mmr):
    coarse = protocol.predicted_masks(micro, head, items, dataclasses.replace(mmr, use_sam=False))
    refined = protocol.predicted_masks(micro, head, items, mmr)
    truths = [item.mask for item in items]
    return protocol.region_scores(coarse, truths), protocol.region_scores(refined, truths)


def test_mmr_raises_region_dice_and_f1_over_the_coarse_map(micro, umci, heldout_defective):
    coarse, refined = _mmr_gain(micro, umci, heldout_defective, micro.config.mmr)
    assert refined.dice >= coarse.dice + MMR_DICE_GAIN, (coarse, refined)
    assert refined.f1 >= coarse.f1, (coarse, refined)


def test_a_fusion_that_ignores_sam_loses_the_gain(micro, umci, heldout_defective):
    """Break: λ = 0 keeps SAM running but drops its masks from the fused map."""
    mmr = dataclasses.replace(micro.config.mmr, lambdas=(0.0, 0.0, 0.0))
    coarse, refined = _mmr_gain(micro, umci, heldout_defective, mmr)
    assert refined.dice < coarse.dice + MMR_DICE_GAIN


def _point_masks_on_their_components(micro, head, items, swap_xy=False):
    """Fraction of components whose point-prompt SAM mask contains the point and overlaps the
    component: the whole frame chain (map → original pixels → SAM's input frame) at once."""
    hits = total = 0
    mmr = micro.config.mmr
    for item in items:
        features = protocol.features(micro, [item])
        text = micro.text_features(item.category)
        amap = micro.coarse_maps([features[0].features], head, text)[0]
        full = resize_map(amap, item.mask.shape)
        components = find_components(full, mmr)
        if not components:
            continue
        points, _ = prompts_for(components, item.mask.shape, mmr)
        if swap_xy:
            points = points[..., ::-1].copy()
        embedding = micro.sam_embeddings([item.image], [image_hash(item.image)])[0]
        masks, _ = micro.sam.decode(embedding, item.mask.shape, points=points, multimask=True)
        for comp, mask, point in zip(components, masks.cpu().numpy(), points, strict=True):
            x, y = (int(v) for v in point[0])
            on_point = mask[min(y, mask.shape[0] - 1), min(x, mask.shape[1] - 1)]
            hits += int(on_point and (mask & comp.mask).any())
            total += 1
    return hits / max(total, 1), total


def test_sam_prompts_fall_inside_their_component_and_sam_follows_them(
    micro, umci, heldout_defective
):
    share, total = _point_masks_on_their_components(micro, umci, heldout_defective)
    assert total >= 10
    assert share >= 0.8


def test_prompts_in_the_wrong_frame_are_caught(micro, umci, heldout_defective):
    """Break: SAM gets (y, x) where it expects (x, y)."""
    share, _ = _point_masks_on_their_components(micro, umci, heldout_defective, swap_xy=True)
    assert share < 0.8
