"""Pipeline behaviour on the tiny preset: shapes, caching, when SAM runs, head swaps."""

from __future__ import annotations

import numpy as np
import pytest

import clipsam
from clipsam.heads import HeadMismatchError
from clipsam.images import ImageError
from tests.helpers import BlobHead, count_backbone_calls

ODD_SIZES = [(37, 53), (101, 77), (64, 200), (300, 31)]


def _images(rng, sizes=ODD_SIZES):
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _check(prediction, shape):
    assert prediction.anomaly_map.shape == shape
    assert prediction.anomaly_map.dtype == np.float32
    assert 0.0 <= prediction.anomaly_map.min() <= prediction.anomaly_map.max() <= 1.0
    assert prediction.mask.shape == shape and prediction.mask.dtype == bool
    assert 0.0 <= prediction.score <= 1.0
    union = np.zeros(shape, dtype=bool)
    for region in prediction.regions:
        x0, y0, x1, y1 = region.bbox
        assert 0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]
        assert region.mask.shape == shape and region.mask[y0:y1, x0:x1].sum() == region.mask.sum()
        assert 0.0 <= region.score <= 1.0
        union |= region.mask
    np.testing.assert_array_equal(union, prediction.mask)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
def test_shapes_and_ranges_at_odd_sizes(make_tiny, rng, tau):
    pipeline = make_tiny(tau=tau)
    images = _images(rng)
    predictions = pipeline.predict(images, category="metal_nut")
    assert len(predictions) == len(images)
    for prediction, image in zip(predictions, images, strict=True):
        _check(prediction, image.shape[:2])
    if tau == 0.0:  # the whole map is one component: SAM ran and found a region
        assert all(p.sam_used for p in predictions)
    if tau == 1.0:
        assert not any(p.sam_used or p.regions or p.mask.any() for p in predictions)


def test_accepts_grayscale_pil_paths_and_bytes(make_tiny, rng, tmp_path):
    from PIL import Image

    pipeline = make_tiny(tau=1.0)  # no SAM: coarse maps are comparable to float tolerance
    gray = rng.integers(0, 256, (40, 60), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    inputs = [gray, Image.fromarray(gray), path, path.read_bytes(), str(path)]
    maps = [p.anomaly_map for p in pipeline.predict(inputs, "screw")]
    for amap in maps:
        np.testing.assert_allclose(amap, maps[0], atol=1e-5)
    assert len(pipeline.predict(gray, "screw")) == 1  # a single image, not a list


def test_broken_input_raises_image_error(tiny_pipeline):
    with pytest.raises(ImageError, match="not a readable image"):
        tiny_pipeline.predict([b"definitely not a png"], "screw")
    with pytest.raises(ImageError, match="H×W×3"):
        tiny_pipeline.predict([np.zeros((4, 4, 5), dtype=np.uint8)], "screw")


def test_second_predict_reuses_cached_features_even_after_head_swap(make_tiny, rng):
    pipeline = make_tiny(tau=0.0)
    calls = count_backbone_calls(pipeline)
    images = _images(rng, [(50, 70), (80, 40)])
    first = pipeline.predict(images, "bottle")
    assert calls["clip_images"] == 2 and calls["sam_images"] == 2
    again = pipeline.predict(images, "bottle")
    pipeline.set_head(pipeline.new_head(seed=7))
    swapped = pipeline.predict(images, "bottle")
    assert calls["clip_images"] == 2 and calls["sam_images"] == 2  # no backbone ran again
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert not np.array_equal(first[0].anomaly_map, swapped[0].anomaly_map)
    assert pipeline.cache.hits >= 8


def test_no_sam_call_when_map_stays_under_tau(make_tiny, rng):
    pipeline = make_tiny()
    pipeline.set_head(BlobHead(pipeline.clip.backbone_id, pipeline.clip.grid, spots=[]))
    calls = count_backbone_calls(pipeline)
    predictions = pipeline.predict(_images(rng), "bottle")
    assert calls["clip_images"] == len(ODD_SIZES)
    assert calls["sam_images"] == 0 and calls["decoder_calls"] == 0
    assert not any(p.sam_used or p.mask.any() for p in predictions)
    assert all(p.anomaly_map.max() < 0.5 for p in predictions)


def test_sam_encoder_once_per_image_decoder_once_per_level(make_tiny, rng):
    pipeline = make_tiny()
    spots = [(2, 2), (2, 11), (11, 2), (11, 11)]
    pipeline.set_head(BlobHead(pipeline.clip.backbone_id, pipeline.clip.grid, spots))
    calls = count_backbone_calls(pipeline)
    images = _images(rng, [(120, 120), (90, 150), (200, 100)])
    predictions = pipeline.predict(images, "bottle")
    assert calls["sam_images"] == len(images)
    assert calls["decoder_calls"] == 3 * len(images)  # three levels, never one call per prompt
    assert calls["prompts_4"] == 3 * len(images)  # each call carried all four components
    assert all(p.sam_used for p in predictions)


def test_clean_images_in_a_batch_skip_sam(make_tiny, rng):
    pipeline = make_tiny()
    head = BlobHead(pipeline.clip.backbone_id, pipeline.clip.grid, [(5, 5)])
    pipeline.set_head(head)
    calls = count_backbone_calls(pipeline)
    pipeline.predict(_images(rng, [(64, 64)]), "bottle")
    assert calls["sam_images"] == 1
    head.spots = []
    pipeline.predict(_images(rng, [(64, 64), (32, 32)]), "bottle")  # new, clean images
    assert calls["sam_images"] == 1


def test_head_for_another_backbone_is_refused(make_tiny):
    other = make_tiny(seed=1)
    pipeline = make_tiny()
    with pytest.raises(HeadMismatchError, match="random-seed1"):
        pipeline.set_head(other.new_head())


def test_info_reports_random_weights_and_head(tiny_pipeline):
    info = tiny_pipeline.info()
    assert info["random_weights"] is True and info["weights"] == "random"
    assert info["clip_backbone"].startswith("clipsam-micro/random-seed0/224px")
    assert info["sam_backbone"] == "sam-tiny/random-seed0"
    assert info["head"] == "umci"


def test_default_head_is_training_free_until_one_is_trained():
    pipeline = clipsam.load_pipeline("tiny", weights="random")
    assert pipeline.head.kind == "none" and pipeline.info()["head_version"] == "zero-shot"


def test_text_features_are_computed_once_per_category(make_tiny):
    pipeline = make_tiny()
    seen = []
    original = pipeline.clip.encode_text

    def counting(sentences):
        seen.append(len(sentences))
        return original(sentences)

    pipeline.clip.encode_text = counting
    first = pipeline.clip.text_features("metal_nut")
    second = pipeline.clip.text_features("metal-nut")  # same phrase once normalised
    assert first is second and seen == [7 * 35, 5 * 35]
    with_words = pipeline.clip.text_features("metal_nut", ["scratched", "dented"])
    assert seen[-1] == 7 * 35 and not np.allclose(with_words[1], first[1])


def test_identical_backbone_in_every_process_by_seed(make_tiny):
    a, b = make_tiny(), make_tiny()
    for (name, x), (_, y) in zip(
        a.clip.state_dict().items(), b.clip.state_dict().items(), strict=True
    ):
        assert np.array_equal(x.numpy(), y.numpy()), name
    sam_a, sam_b = a.sam.sam.state_dict(), b.sam.sam.state_dict()
    assert all(np.array_equal(sam_a[k].numpy(), sam_b[k].numpy()) for k in sam_a)


def test_truncated_text_forward_equals_open_clip(tiny_pipeline):
    import torch

    from clipsam.prompts import prompt_sentences

    normal, abnormal = prompt_sentences("metal_nut", ["scratched"])
    sentences = normal[:20] + abnormal[-20:]
    clip = tiny_pipeline.clip
    with torch.inference_mode():
        reference = clip.model.encode_text(clip.tokenizer(sentences), normalize=True)
    torch.testing.assert_close(clip.encode_text(sentences), reference, atol=1e-5, rtol=1e-5)


def test_text_features_persist_in_the_disk_cache(make_tiny, tmp_path):
    first = make_tiny(cache_dir=str(tmp_path))
    expected = first.text_features("capsule")
    second = make_tiny(cache_dir=str(tmp_path))
    second.clip.encode_text = None  # would fail if called: the disk cache must answer
    np.testing.assert_array_equal(second.text_features("capsule").numpy(), expected.numpy())


def _backbone_digest(pipeline) -> str:
    import hashlib

    digest = hashlib.sha256()
    for module in (pipeline.clip, pipeline.sam.sam):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_another_process_builds_the_same_tiny_backbone(tiny_pipeline):
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import clipsam, tests.test_pipeline as t; "
        "print(t._backbone_digest(clipsam.load_pipeline('tiny', weights='random')))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == _backbone_digest(tiny_pipeline)
