"""The vectorised brush RLE gives label-studio-sdk's bytes exactly, on every kind of mask."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from labelstudio.brush_rle import mask_to_rle


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :300]
    return [
        np.zeros((5, 7), dtype=np.uint8),
        np.full((300, 300), 255, dtype=np.uint8),  # one run of 360 000 values: split fields
        ((yy - 150) ** 2 + (xx - 140) ** 2 < 90**2).astype(np.uint8) * 255,
        (rng.random((64, 96)) < 0.5).astype(np.uint8) * 255,  # ragged: many short runs
        (rng.random((40, 50)) < 0.05).astype(np.uint8) * 255,
        rng.integers(0, 256, (9, 11), dtype=np.uint8),  # any byte values
        np.pad(np.full((1, 16385), 255, dtype=np.uint8), ((0, 0), (0, 3))),  # 65 540-long run
        np.ones((1, 1), dtype=np.uint8) * 255,
    ]


@pytest.mark.parametrize("index", range(len(_masks())))
def test_same_bytes_as_the_sdk(index):
    mask = _masks()[index]
    ours = mask_to_rle(mask)
    assert ours == mask2rle(mask)
    decoded = np.asarray(decode_rle(ours), dtype=np.uint8).reshape(*mask.shape, 4)[:, :, 3]
    assert np.array_equal(decoded, mask)
