"""APRIL-GAN's ``test.py`` zero-shot map, written out independently, beside the pipeline's.

The reference is APRIL-GAN's code path (method spec §10; ``test.py`` at commit f13b8a6, the
resize and softmax at lines 179–181) in float64 numpy with a hand-written bilinear resize: per
stage, tokens → Linear → L2-normalise → ``100 · tokens @ text`` → reshape to the grid →
bilinear upsample with ``align_corners=True`` → softmax over the two channels → channel 1; the
**sum** over stages.
The pipeline's ``linear`` head gets the same Linear weights; its coarse map is the **mean**
over stages (a deliberate difference, ``docs/method.md``), so it is compared ×S.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsam.heads import LinearHead, coarse_map
from clipsam.images import image_hash


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights with ``align_corners=True``: corner samples coincide."""
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    low = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - low
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), low] = 1.0 - frac
    weights[np.arange(n_out), low + 1] += frac
    return weights


def aprilgan_map(
    stage_tokens: np.ndarray,
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    text: np.ndarray,
    size: int,
) -> np.ndarray:
    """APRIL-GAN's zero-shot map of one image: ``stage_tokens`` (S, L, D) with CLS dropped,
    ``text`` (E, 2) as its ``encode_text_with_prompt_ensemble`` returns it → (size, size)."""
    total = np.zeros((size, size))
    for tokens, w, b in zip(stage_tokens, weights, biases, strict=True):
        projected = tokens @ w.T + b
        projected = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
        logits = 100.0 * projected @ text  # (L, 2)
        grid = int(np.sqrt(logits.shape[0]))
        channels = logits.T.reshape(2, grid, grid)
        resize = resize_matrix(grid, size)
        up = resize @ channels @ resize.T
        up = up - up.max(axis=0, keepdims=True)
        probabilities = np.exp(up) / np.exp(up).sum(axis=0, keepdims=True)
        total += probabilities[1]
    return total


def compare(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(Pearson correlation, max absolute difference) of two maps."""
    corr = float(np.corrcoef(ours.ravel(), reference.ravel())[0, 1])
    return corr, float(np.abs(ours - reference).max())


def _linear_weights(head: LinearHead) -> tuple[list[np.ndarray], list[np.ndarray]]:
    weights = [fc.weight.detach().double().numpy() for fc in head.fc]
    biases = [fc.bias.detach().double().numpy() for fc in head.fc]
    return weights, biases


def test_resize_matrix_matches_its_definition():
    m = resize_matrix(3, 5)
    np.testing.assert_allclose(m @ np.array([0.0, 1.0, 4.0]), [0.0, 0.5, 1.0, 2.5, 4.0])


def test_linear_head_reproduces_aprilgan_at_the_real_geometry():
    """37×37 patch grid → 518² with 4 stages, as ViT-L-14-336 at 518²; small widths."""
    torch.manual_seed(0)
    stages, grid, size, in_dim, dim = 4, 37, 518, 48, 32
    head = LinearHead("test", in_dim, dim, stages, grid).eval()
    tokens = torch.randn(1, stages, grid * grid, in_dim)
    text = torch.nn.functional.normalize(torch.randn(2, dim), dim=-1)
    with torch.no_grad():
        ours = coarse_map(head({"stages": tokens}, text), size)[0].numpy() * stages
    weights, biases = _linear_weights(head)
    reference = aprilgan_map(
        tokens[0].double().numpy(), weights, biases, text.double().T.numpy(), size
    )
    corr, max_diff = compare(ours, reference)
    assert corr > 0.99999, corr
    assert max_diff < 1e-4, max_diff


def test_pipeline_linear_head_reproduces_aprilgan_on_backbone_features(tiny_pipeline, rng):
    """The tiny pipeline end to end: its own CLIP features and text, a linear head."""
    from clipsam.data import render_synthetic_image

    pipeline = tiny_pipeline
    head = pipeline.new_head(seed=3, kind="linear").to(pipeline.device).eval()
    assert isinstance(head, LinearHead)
    image, _ = render_synthetic_image("widget", rng, (128, 128), ("spot",))
    features = pipeline.clip_features([image], [image_hash(image)])
    text = pipeline.text_features("widget")
    ours = pipeline.coarse_maps(features, head, text)[0].cpu().numpy()
    stages = len(head.fc)
    weights, biases = _linear_weights(head.cpu())
    reference = aprilgan_map(
        features[0]["stages"].double().numpy(), weights, biases, text.double().T.cpu().numpy(),
        pipeline.clip.config.image_size,
    )  # fmt: skip
    corr, max_diff = compare(ours * stages, reference)
    assert corr > 0.99999, corr
    assert max_diff < 1e-4, max_diff


@pytest.mark.parametrize("align_corners", [False])
def test_the_old_upsampling_is_what_differed(align_corners):
    """``align_corners=False`` (the pipeline before issue 12) is measurably off the reference."""
    torch.manual_seed(0)
    stages, grid, size, in_dim, dim = 4, 37, 518, 48, 32
    head = LinearHead("test", in_dim, dim, stages, grid).eval()
    tokens = torch.randn(1, stages, grid * grid, in_dim)
    text = torch.nn.functional.normalize(torch.randn(2, dim), dim=-1)
    with torch.no_grad():
        logits = head({"stages": tokens}, text)[0]
    up = torch.nn.functional.interpolate(
        logits, size=(size, size), mode="bilinear", align_corners=align_corners
    )
    ours = torch.softmax(up, dim=1)[:, 1].sum(dim=0).numpy()
    weights, biases = _linear_weights(head)
    reference = aprilgan_map(
        tokens[0].double().numpy(), weights, biases, text.double().T.numpy(), size
    )
    _, max_diff = compare(ours, reference)
    assert max_diff > 0.1
