"""The few-shot normal memory (clipsam.fewshot): bounded, tied to its backbone, saved and loaded,
and blended so that the calibrated 0.5 keeps its meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clipsam
from clipsam.fewshot import (
    MemoryBank,
    MemoryMismatchError,
    blend,
    build_memory,
    fewshot_map,
    greedy_coreset,
    load_memory,
    save_memory,
)
from clipsam.images import image_hash

BACKBONE = "test-backbone"


def _references(count: int, stages: int = 2, grid: int = 6, width: int = 16, seed: int = 0):
    """Good images: every patch is one of three looks plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    looks = torch.randn(stages, 3, width, generator=generator)
    which = torch.arange(grid * grid) % 3
    return [
        (
            str(i),
            looks[:, which] + 0.05 * torch.randn(stages, grid * grid, width, generator=generator),
        )
        for i in range(count)
    ]


def test_memory_is_bounded_in_images_and_patches():
    references = _references(10)  # 10 images × 36 patches
    memory = build_memory(BACKBONE, "widget", references, max_patches=50, max_images=4)
    assert memory.tokens.shape == (2, 50, 16)
    assert memory.sources == ("6", "7", "8", "9")  # the newest (last given) images
    unbounded = build_memory(BACKBONE, "widget", references[:3], max_patches=10_000)
    assert unbounded.tokens.shape == (2, 3 * 36, 16)


def test_coreset_keeps_a_rare_kind_of_patch_that_a_sample_would_miss():
    """Greedy k-center covers every cluster: 1 000 patches of one look, 4 of another."""
    generator = torch.Generator().manual_seed(0)
    common = F.normalize(torch.randn(1, 32, generator=generator), dim=-1)
    rare = -common
    points = torch.cat(
        [common + 0.01 * torch.randn(1000, 32, generator=generator), rare.repeat(4, 1)]
    )
    chosen = greedy_coreset(points[None], 8)
    assert (chosen >= 1000).any()
    assert torch.equal(chosen, greedy_coreset(points[None], 8))  # deterministic


def test_a_seen_image_scores_under_the_threshold_and_a_foreign_one_above():
    references = _references(3)
    memory = build_memory(BACKBONE, "widget", references)
    seen = fewshot_map(references[1][1][None], memory, size=24)
    foreign = fewshot_map(torch.randn(1, 2, 36, 16, generator=torch.Generator().manual_seed(9)),
                          memory, size=24)  # fmt: skip
    assert float(seen.max()) < 0.05
    assert float(foreign.mean()) > 0.5
    assert seen.shape == (1, 24, 24)


def test_blend_keeps_the_calibrated_threshold():
    maps = torch.tensor([0.5, 0.9, 0.9, 0.2])
    fewshot = torch.tensor([0.5, 0.0, 0.9, 0.2])
    assert blend(maps, fewshot).tolist() == pytest.approx([0.5, 0.45, 0.9, 0.2])


def test_memory_of_another_backbone_is_refused(tmp_path):
    memory = build_memory("other-backbone", "widget", _references(2))
    with pytest.raises(MemoryMismatchError, match="other-backbone"):
        MemoryBank(BACKBONE).put(memory)
    save_memory(memory, tmp_path / "m.safetensors")
    with pytest.raises(MemoryMismatchError, match="other-backbone"):
        load_memory(tmp_path / "m.safetensors", BACKBONE)


def test_persistence_round_trip(tmp_path):
    memory = build_memory(BACKBONE, "widget", _references(3), max_patches=40)
    path = tmp_path / "memory" / "widget.safetensors"
    save_memory(memory, path)
    loaded = load_memory(path, BACKBONE)
    assert (loaded.category, loaded.sources, loaded.grid) == ("widget", ("0", "1", "2"), 6)
    assert loaded.threshold == pytest.approx(memory.threshold)
    torch.testing.assert_close(loaded.tokens, memory.tokens, atol=2e-3, rtol=0)
    (tmp_path / "junk.safetensors").write_bytes(b"not a memory")
    with pytest.raises(MemoryMismatchError):
        load_memory(tmp_path / "junk.safetensors", BACKBONE)


def test_pipeline_blends_the_memory_of_the_predicted_category_only():
    """A memory holding the very images lowers their map; other categories are untouched."""
    pipeline = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    before = [p.anomaly_map for p in pipeline.predict(images, "widget")]
    features = pipeline.clip_features(images, [image_hash(i) for i in images])
    references = [(str(i), f["stages"]) for i, f in enumerate(features)]
    pipeline.memories.put(build_memory(pipeline.clip.backbone_id, "widget", references))
    after = [p.anomaly_map for p in pipeline.predict(images, "widget")]
    other = [p.anomaly_map for p in pipeline.predict(images, "gadget")]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b / 2, atol=1e-4)  # the memory's map is 0 on seen patches
    assert not np.allclose(other[0], after[0])
    pipeline.memories.remove("widget")
    np.testing.assert_allclose(pipeline.predict(images, "widget")[0].anomaly_map, before[0])
