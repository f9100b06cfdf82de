"""Weights: explicit files, cache dir, checked downloads, and errors that say what to do."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import clipsam
from clipsam import weights
from clipsam.weights import WeightPaths, WeightsNotFoundError


def test_offline_without_files_names_the_file_and_the_env_var():
    with pytest.raises(WeightsNotFoundError, match=r"ViT-L-14-336px\.pt.*CLIPSAM_CLIP_WEIGHTS"):
        clipsam.load_pipeline("fast")


def test_missing_sam_checkpoint_is_reported_before_building_anything(tmp_path, monkeypatch):
    clip_file = tmp_path / "clip.safetensors"
    clip_file.write_bytes(b"placeholder")  # never read: SAM's absence is found first
    monkeypatch.setenv("CLIPSAM_CLIP_WEIGHTS", str(clip_file))
    with pytest.raises(
        WeightsNotFoundError, match=r"sam_vit_b_01ec64\.pth.*CLIPSAM_SAM_CHECKPOINT"
    ):
        clipsam.load_pipeline("fast")


def test_explicit_path_that_is_not_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPSAM_CLIP_WEIGHTS", str(tmp_path / "nope.pt"))
    with pytest.raises(WeightsNotFoundError, match="CLIPSAM_CLIP_WEIGHTS points at"):
        clipsam.load_pipeline("paper")


def test_checked_download_with_progress_then_cache_hit(tmp_path, monkeypatch):
    payload = b"sam weights" * 1000
    source = tmp_path / "sam_vit_b_01ec64.pth"
    source.write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", (source.as_uri(), md5))
    paths = WeightPaths(home=tmp_path / "home")
    target = weights.sam_checkpoint_file("vit_b", paths)
    assert target == tmp_path / "home" / "sam" / "sam_vit_b_01ec64.pth"
    assert target.read_bytes() == payload
    source.unlink()  # a second call must not download again
    assert weights.sam_checkpoint_file("vit_b", paths) == target


def test_download_with_a_wrong_checksum_is_refused_and_removed(tmp_path, monkeypatch):
    source = tmp_path / "sam_vit_b_01ec64.pth"
    source.write_bytes(b"tampered")
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", (source.as_uri(), "0" * 32))
    paths = WeightPaths(home=tmp_path / "home")
    with pytest.raises(WeightsNotFoundError, match="md5 does not match"):
        weights.sam_checkpoint_file("vit_b", paths)
    assert not (tmp_path / "home" / "sam" / "sam_vit_b_01ec64.pth").exists()


def test_unreachable_url_gives_the_hint(tmp_path, monkeypatch):
    missing = (tmp_path / "gone.pth").as_uri()
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", (missing, "0" * 32))
    with pytest.raises(
        WeightsNotFoundError, match=r"could not be downloaded.*CLIPSAM_SAM_CHECKPOINT"
    ):
        weights.sam_checkpoint_file("vit_b", WeightPaths(home=tmp_path / "home"))


def test_local_checkpoints_load_through_the_real_code(tmp_path, monkeypatch, rng):
    """Tiny CLIP weights saved at another grid size load with their position embedding resized."""
    small = clipsam.load_pipeline("tiny", weights="random", image_size=112, seed=3)  # grid 8×8
    clip_file = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in small.clip.model.state_dict().items()}, str(clip_file))
    sam_file = tmp_path / "tiny-sam.pth"
    torch.save(small.sam.sam.state_dict(), sam_file)
    monkeypatch.setenv("CLIPSAM_CLIP_WEIGHTS", str(clip_file))
    monkeypatch.setenv("CLIPSAM_SAM_CHECKPOINT", str(sam_file))
    loaded = clipsam.load_pipeline("tiny", weights="pretrained")  # 224 px: grid 16×16
    info = loaded.info()
    assert info["random_weights"] is False
    assert info["clip_backbone"].startswith("clipsam-micro/tiny-clip/224px")
    assert info["sam_backbone"] == "sam-tiny/tiny-sam"
    ref, got = small.clip.model.state_dict(), loaded.clip.model.state_dict()
    assert got["visual.positional_embedding"].shape == (16 * 16 + 1, 128)
    torch.testing.assert_close(got["visual.conv1.weight"], ref["visual.conv1.weight"])
    torch.testing.assert_close(got["token_embedding.weight"], ref["token_embedding.weight"])
    sam_ref = small.sam.sam.state_dict()
    for key, value in loaded.sam.sam.state_dict().items():
        torch.testing.assert_close(value, sam_ref[key])
    image = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    assert loaded.predict([image], "bottle")[0].anomaly_map.shape == (50, 50)


def test_tiny_pretrained_clip_is_the_shipped_micro_clip():
    """micro-CLIP is trained here and ships in the package (issue 11)."""
    loaded = clipsam.load_pipeline("tiny", weights="pretrained", use_sam=False)
    info = loaded.info()
    assert info["random_weights"] is False
    assert info["clip_backbone"].startswith("clipsam-micro/miniature/224px")
    random = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
    assert not torch.equal(
        loaded.clip.model.visual.conv1.weight, random.clip.model.visual.conv1.weight
    )


def test_the_tiny_preset_loads_the_shipped_micro_sam_through_the_builder():
    loaded = clipsam.load_pipeline("tiny", weights="pretrained")
    assert loaded.info()["sam_backbone"] == "sam-tiny/micro_sam"
    state = load_file(str(weights.MICRO_SAM_WEIGHTS))
    encoder = loaded.sam.sam.image_encoder
    assert torch.equal(
        encoder.patch_embed.proj.weight, state["image_encoder.patch_embed.proj.weight"].float()
    )


def test_missing_micro_sam_says_how_to_train_it(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "MICRO_SAM_WEIGHTS", tmp_path / "gone.safetensors")
    with pytest.raises(weights.WeightsNotFoundError, match=r"training\.miniature\.sam"):
        clipsam.load_pipeline("tiny", weights="pretrained")


def test_missing_shipped_weights_say_how_to_train_them(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "MICRO_CLIP_WEIGHTS", tmp_path / "gone.safetensors")
    with pytest.raises(weights.WeightsNotFoundError, match=r"training\.miniature\.clip"):
        clipsam.load_pipeline("tiny", weights="pretrained", use_sam=False)


def test_explicit_weight_paths_mean_the_environment_is_not_read(monkeypatch, tmp_path):
    """Issue 13: the edges read the environment and pass ``weight_paths``; given them,
    ``load_pipeline`` reads no variable (here one that would fail the load if it were read)."""
    monkeypatch.setenv("CLIPSAM_CLIP_WEIGHTS", str(tmp_path / "nope.pt"))
    monkeypatch.setenv("CLIPSAM_HEAD", str(tmp_path / "nope.safetensors"))
    paths = WeightPaths.from_env({"CLIPSAM_HOME": str(tmp_path / "home"), "CLIPSAM_OFFLINE": "1"})
    loaded = clipsam.load_pipeline("tiny", weights="pretrained", use_sam=False, weight_paths=paths)
    assert loaded.info()["random_weights"] is False and loaded.head.kind == "none"
    with pytest.raises(WeightsNotFoundError, match="CLIPSAM_CLIP_WEIGHTS points at"):
        clipsam.load_pipeline("tiny", weights="pretrained", use_sam=False)  # no paths: env read
