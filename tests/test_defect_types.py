"""Defect types: region descriptions, zero-shot probabilities, the learnt classifier, head files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipsam.defect_types import (
    RegionDescriptor,
    TypeClassifier,
    describe_region,
    fit_type_classifier,
    shape_descriptor,
    type_sentences,
    zero_shot_probs,
)
from clipsam.heads import load_head, save_head
from clipsam.heads.zero_shot import ZeroShotHead
from labelstudio.rasterise import rasterise_by_label


def _tokens(grid: int, dim: int, fill: dict[int, int]) -> torch.Tensor:
    """(grid², dim) tokens: basis vector ``fill[cell]`` at those cells, basis 0 elsewhere."""
    tokens = torch.zeros(grid * grid, dim)
    tokens[:, 0] = 1.0
    for cell, axis in fill.items():
        tokens[cell] = 0.0
        tokens[cell, axis] = 1.0
    return tokens


def test_a_region_is_described_by_the_tokens_under_it():
    grid = 4
    tokens = _tokens(grid, 8, {5: 3, 6: 3})  # cells (1, 1) and (1, 2) point along axis 3
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:20, 10:30] = True  # exactly those two cells
    described = describe_region(mask, tokens, grid)
    assert described.embedding.argmax() == 3 and described.embedding[3] == pytest.approx(1.0)
    outside = np.zeros_like(mask)
    outside[30:40, 0:10] = True
    assert describe_region(outside, tokens, grid).embedding.argmax() == 0


def test_a_region_smaller_than_a_patch_takes_the_patch_under_it():
    tokens = _tokens(4, 8, {10: 5})  # cell (2, 2)
    mask = np.zeros((40, 40), dtype=bool)
    mask[24, 25] = True
    assert describe_region(mask, tokens, 4).embedding.argmax() == 5


def test_shape_tells_a_line_from_a_blob():
    line = np.zeros((64, 64), dtype=bool)
    line[30:32, 4:60] = True
    yy, xx = np.mgrid[:64, :64]
    blob = (yy - 32) ** 2 + (xx - 32) ** 2 < 100
    two = blob & ((xx < 28) | (xx > 36))
    eccentricity, solidity, log_area, extent, pieces = shape_descriptor(line)
    assert eccentricity > 0.99 and pieces == 1 and solidity == extent == pytest.approx(1.0)
    assert shape_descriptor(blob)[0] < 0.3 and shape_descriptor(blob)[1] > 0.9
    assert shape_descriptor(two)[4] == 2
    assert log_area == pytest.approx(np.log(line.sum() / line.size))


def test_zero_shot_picks_the_label_whose_text_matches():
    text = F.normalize(torch.eye(3, 6), dim=-1)  # label j along axis j
    regions = np.eye(6)[[2, 0, 1]]
    probs = zero_shot_probs(regions, text)
    assert probs.argmax(1).tolist() == [2, 0, 1]
    assert np.allclose(probs.sum(1), 1.0)
    sentences = type_sentences("Missing_piece", "hex nut")
    assert "a photo of a damaged hex nut with missing piece." in sentences


def _examples(rng: np.random.Generator, n: int) -> tuple[list[RegionDescriptor], list[str]]:
    """Three labels: Scratch along axis 0 and long, Spot along axis 1 and round, Stain axis 2."""
    regions, labels = [], []
    for i in range(n):
        k = i % 3
        embedding = rng.normal(0, 0.3, 8)
        embedding[k] += 2.0
        shape = rng.normal(0, 0.05, 5) + np.array([[0.99, 0.5, -6, 0.2, 1], [0.2, 0.95, -5, 0.8, 1],
                                                   [0.6, 0.6, -4, 0.5, 2]][k])  # fmt: skip
        regions.append(RegionDescriptor(embedding / np.linalg.norm(embedding), shape))
        labels.append(["Scratch", "Spot", "Stain"][k])
    return regions, labels


def test_the_classifier_learns_types_and_fails_when_taught_wrong():
    rng = np.random.default_rng(0)
    train, labels = _examples(rng, 30)
    test, truth = _examples(rng, 60)
    classifier = fit_type_classifier(train, labels)
    assert classifier is not None and classifier.labels == ("Scratch", "Spot", "Stain")
    assert classifier.examples == (10, 10, 10)
    probs = classifier.probs(test, ["Scratch", "Spot", "Stain"])
    accuracy = np.mean([["Scratch", "Spot", "Stain"][i] == t for i, t in
                        zip(probs.argmax(1), truth, strict=True)])  # fmt: skip
    assert accuracy > 0.9
    rotated = {"Scratch": "Spot", "Spot": "Stain", "Stain": "Scratch"}
    wrong = fit_type_classifier(train, [rotated[label] for label in labels])
    assert wrong is not None
    probs = wrong.probs(test, ["Scratch", "Spot", "Stain"])
    accuracy = np.mean([["Scratch", "Spot", "Stain"][i] == t for i, t in
                        zip(probs.argmax(1), truth, strict=True)])  # fmt: skip
    assert accuracy < 0.1


def test_labels_the_classifier_never_saw_get_nothing():
    rng = np.random.default_rng(1)
    train, labels = _examples(rng, 12)
    classifier = fit_type_classifier(train, labels)
    assert classifier is not None
    probs = classifier.probs(train[:3], ["Crack", "Spot", "Scratch"])
    assert np.allclose(probs[:, 0], 0.0) and np.allclose(probs.sum(1), 1.0)
    assert classifier.covers(["Crack", "Spot", "Scratch"])
    assert not classifier.covers(["Crack", "Spot"])
    assert fit_type_classifier(train[:2], ["Spot", "Spot"]) is None  # one label: nothing to learn


def test_the_classifier_travels_in_the_head_file(tmp_path):
    rng = np.random.default_rng(2)
    train, labels = _examples(rng, 12)
    classifier = fit_type_classifier(train, labels)
    assert classifier is not None
    head = ZeroShotHead("backbone", grid=4)
    plain = save_head(head, tmp_path / "plain.safetensors")
    head.type_classifier = classifier
    typed = save_head(head, tmp_path / "typed.safetensors", version=None)
    assert typed != plain  # learning types makes a new version
    loaded = load_head(tmp_path / "typed.safetensors", "backbone").type_classifier
    assert loaded is not None and loaded.labels == classifier.labels
    assert np.allclose(loaded.probs(train, list(labels[:3])),
                       classifier.probs(train, list(labels[:3])), atol=1e-4)  # fmt: skip
    assert load_head(tmp_path / "plain.safetensors").type_classifier is None
    assert TypeClassifier.from_dict({"labels": ["a"]}) is None  # malformed metadata: ignored


def test_corrected_regions_are_split_by_label():
    def rect(label: str, x: float, w: float) -> dict:
        return {"type": "rectanglelabels", "to_name": "img", "original_width": 100,
                "original_height": 50, "value": {"x": x, "y": 0, "width": w, "height": 100,
                                                 "rectanglelabels": [label]}}  # fmt: skip

    masks = rasterise_by_label(
        [rect("Scratch", 0, 10), rect("Spot", 50, 20), rect("Scratch", 80, 10)], "img"
    )
    assert sorted(masks) == ["Scratch", "Spot"]
    assert masks["Scratch"].sum() == 2 * 10 * 50 and masks["Spot"].sum() == 20 * 50
    assert not (masks["Scratch"] & masks["Spot"]).any()
    assert rasterise_by_label([rect("Spot", 0, 10)], "other") == {}
