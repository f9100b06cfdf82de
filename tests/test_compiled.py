"""``compile=True``: the frozen encoders compiled by TorchInductor compute what eager mode does."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import clipsam
from clipsam.images import image_hash

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("c++") is None, reason="TorchInductor needs a C++ compiler"),
]


def test_compiled_encoders_match_eager():
    """Two images of different sizes in one call (the compiled path runs them one at a time):
    CLIP's tokens and SAM's embeddings agree with the eager pipeline's to fp32 rounding, and
    the compiled functions are what ran."""
    eager = clipsam.load_pipeline("tiny", weights="random")
    compiled = clipsam.load_pipeline("tiny", weights="random", compile=True)
    assert compiled.clip.compiled is not None and compiled.sam.compiled_encoder is not None
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (180, 240, 3), dtype=np.uint8) for _ in range(2)]
    images[1] = images[1][:150]
    calls = {"clip": 0, "sam": 0}
    clip_fn, sam_fn = compiled.clip.compiled, compiled.sam.compiled_encoder

    def counted(name, fn):
        def call(*args):
            calls[name] += 1
            return fn(*args)

        return call

    compiled.clip.compiled = counted("clip", clip_fn)
    compiled.sam.compiled_encoder = counted("sam", sam_fn)
    hashes = [image_hash(image) for image in images]
    ours = compiled.clip_features(images, hashes)
    theirs = eager.clip_features(images, hashes)
    for mine, reference in zip(ours, theirs, strict=True):
        for name in ("stages", "global", "vv"):
            torch.testing.assert_close(
                mine[name].float(), reference[name].float(), atol=1e-4, rtol=1e-4
            )
    embeddings = compiled.sam.embed(images)
    torch.testing.assert_close(embeddings, eager.sam.embed(images), atol=1e-4, rtol=1e-4)
    assert calls == {"clip": 2, "sam": 2}


def test_compile_refuses_int8():
    with pytest.raises(ValueError, match="compile=True needs quantize='none'"):
        clipsam.load_pipeline("tiny", weights="random", compile=True, quantize="int8")
