"""The frozen-feature cache: LRU bound, disk tier shared between instances, bad files dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsam.cache import FeatureCache


def _entry(value: float) -> dict[str, torch.Tensor]:
    return {"stages": torch.full((2, 3), value), "global": torch.full((4,), value)}


def test_lru_evicts_the_least_recently_used():
    cache = FeatureCache(max_items=2)
    cache.put("bb", "a", _entry(1))
    cache.put("bb", "b", _entry(2))
    assert cache.get("bb", "a") is not None  # a is now the most recent
    cache.put("bb", "c", _entry(3))
    assert cache.get("bb", "b") is None and cache.get("bb", "a") is not None
    assert cache.get("other-backbone", "a") is None  # keys are per backbone
    assert len(cache) == 2


def test_disk_tier_is_shared_and_survives_a_new_instance(tmp_path):
    first = FeatureCache(max_items=1, disk_dir=tmp_path)
    first.put("bb", "abcdef", _entry(7))
    second = FeatureCache(max_items=1, disk_dir=tmp_path)
    got = second.get("bb", "abcdef")
    assert got is not None and torch.equal(got["stages"], _entry(7)["stages"])
    assert second.get("another", "abcdef") is None


def test_disk_hits_are_views_of_the_mapped_file_not_copies(tmp_path):
    import json

    FeatureCache(disk_dir=tmp_path).put("bb", "abcdef", _entry(3))
    [path] = list(tmp_path.rglob("*.safetensors"))
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    offsets = {name: info["data_offsets"][0] for name, info in json.loads(raw[8 : 8 + length]).items()
               if name != "__metadata__"}  # fmt: skip
    got = FeatureCache(disk_dir=tmp_path).get("bb", "abcdef")
    assert got is not None
    # Both tensors sit in one buffer exactly as far apart as in the file: one map, no copies.
    gap = got["stages"].data_ptr() - got["global"].data_ptr()
    assert gap == offsets["stages"] - offsets["global"]


def test_unreadable_disk_entries_are_dropped_not_fatal(tmp_path):
    cache = FeatureCache(disk_dir=tmp_path)
    cache.put("bb", "abcdef", _entry(1))
    [path] = list(tmp_path.rglob("*.safetensors"))
    path.write_bytes(b"garbage")
    cache.clear_memory()
    assert cache.get("bb", "abcdef") is None and not path.exists()


def test_pipeline_with_disk_cache_skips_clip_in_a_new_process(make_tiny, tmp_path, rng):
    from tests.helpers import count_backbone_calls

    image = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    first = make_tiny(cache_dir=str(tmp_path), tau=1.0)
    expected = first.predict([image], "bottle")[0].anomaly_map
    second = make_tiny(cache_dir=str(tmp_path), tau=1.0)  # as a second process would
    calls = count_backbone_calls(second)
    got = second.predict([image], "bottle")[0].anomaly_map
    assert calls["clip_images"] == 0
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "numerics", [{"quantize": "int8"}, {"precision": "bf16"}], ids=["int8", "bf16"]
)
def test_a_shared_disk_cache_never_hands_features_across_numerics(
    make_tiny, tmp_path, rng, numerics
):
    """An fp32 pipeline and an int8 or bf16 one on the same cache_dir: each encodes the image
    itself (the features differ), and each finds its own again from disk."""
    from tests.helpers import count_backbone_calls

    image = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    make_tiny(cache_dir=str(tmp_path), tau=1.0).predict([image], "bottle")
    other = make_tiny(cache_dir=str(tmp_path), tau=1.0, **numerics)
    calls = count_backbone_calls(other)
    expected = other.predict([image], "bottle")[0].anomaly_map
    assert calls["clip_images"] == 1  # not the fp32 entry
    again = make_tiny(cache_dir=str(tmp_path), tau=1.0, **numerics)
    calls = count_backbone_calls(again)
    np.testing.assert_array_equal(again.predict([image], "bottle")[0].anomaly_map, expected)
    assert calls["clip_images"] == 0


def test_disk_tier_keeps_under_its_size_cap_dropping_the_least_recently_used(tmp_path):
    import os
    import time

    entry = {"x": torch.zeros(1000)}  # ~4 kB per file
    cache = FeatureCache(max_items=1, disk_dir=tmp_path, max_disk_bytes=20_000)
    for index in range(4):
        cache.put("ns", f"k{index}", entry)
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 4
    old = time.time() - 100
    for path in files:
        os.utime(path, (old, old))
    cache.clear_memory()
    assert cache.get("ns", "k0") is not None  # read from disk: now the most recently used
    for index in range(4, 7):
        cache.put("ns", f"k{index}", entry)
    kept = {p.stem for p in tmp_path.rglob("*.safetensors")}
    assert sum(p.stat().st_size for p in tmp_path.rglob("*.safetensors")) <= 20_000
    assert "k0" in kept and "k6" in kept and "k1" not in kept
