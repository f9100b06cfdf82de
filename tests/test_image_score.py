"""Image scores: the default (CLIP global embedding) and AdaCLIP's HSF option."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipsam.cache import FeatureCache
from clipsam.image_score import clip_scores, hsf_centres, hsf_scores
from clipsam.pipeline import Pipeline


def test_hsf_centre_is_the_mean_of_cluster_means_over_the_most_abnormal_patches():
    torch.manual_seed(0)
    batch, stages, grid, dim = 2, 3, 12, 16
    tokens = torch.randn(batch, stages, grid * grid, dim)
    logits = torch.randn(batch, stages, 2, grid, grid)
    centres = hsf_centres(tokens, logits, clusters=4)
    assert centres.shape == (batch, dim)
    torch.testing.assert_close(centres.norm(dim=-1), torch.ones(batch))
    # one cluster: the centre is the normalised mean of the top-20 patches' tokens, all stages
    one = hsf_centres(tokens, logits, clusters=1)
    abnormal = torch.softmax(logits.mean(dim=1).flatten(2), dim=1)[:, 1]
    top = abnormal.topk(5, dim=1).indices
    unit = F.normalize(tokens, dim=-1)
    expected = torch.stack([unit[b][:, top[b]].reshape(-1, dim).mean(0) for b in range(batch)])
    torch.testing.assert_close(one, F.normalize(expected, dim=-1))


def test_hsf_scores_are_probabilities_and_deterministic():
    torch.manual_seed(1)
    tokens = torch.randn(3, 4, 100, 8)
    logits = torch.randn(3, 4, 2, 10, 10)
    global_embeds = F.normalize(torch.randn(3, 8), dim=-1)
    text = F.normalize(torch.randn(2, 8), dim=-1)
    scores = hsf_scores(tokens, logits, global_embeds, text)
    assert scores.shape == (3,) and bool(((scores >= 0) & (scores <= 1)).all())
    torch.testing.assert_close(scores, hsf_scores(tokens, logits, global_embeds, text))
    assert not torch.allclose(scores, clip_scores(global_embeds, text))


@pytest.fixture(scope="module")
def hsf_images():
    from clipsam.data import render_synthetic_image

    rng = np.random.default_rng(5)
    return [
        render_synthetic_image("widget", rng, (96, 96), kinds)[0]
        for kinds in ((), ("spot",), ("scratch",))
    ]


def test_pipeline_hsf_option_runs_and_differs_from_the_default(tiny_pipeline, hsf_images):
    cache = FeatureCache(8)  # CLIP runs once for both

    def pipeline(image_score: str) -> Pipeline:  # the shared backbone, no SAM (fast)
        base = tiny_pipeline.config
        mmr = dataclasses.replace(base.mmr, use_sam=False)
        config = dataclasses.replace(base, image_score=image_score, mmr=mmr)
        return Pipeline(
            config, tiny_pipeline.clip, None, tiny_pipeline.head, cache,
            tiny_pipeline.device,
        )  # fmt: skip

    default = pipeline("clip_max").predict(hsf_images, category="widget")
    fused = pipeline("hsf").predict(hsf_images, category="widget")
    for a, b in zip(default, fused, strict=True):
        assert 0.0 <= b.score <= 1.0 and 0.0 <= b.clip_score <= 1.0
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)  # only the score changes
    assert [a.clip_score for a in default] != pytest.approx([b.clip_score for b in fused])
