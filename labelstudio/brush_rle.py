"""Label Studio's brush RLE, vectorised: the same bytes as label-studio-sdk's ``mask2rle``.

The SDK builds its bit string one run at a time in Python, so a ragged mask on a large image
takes about half a second; an interactive click must answer in a fraction of that. This encoder
writes every run's bit field at once with numpy. ``tests/labelstudio/test_brush_rle.py`` checks
it byte for byte against the SDK, which stays the reference.

The format (``label_studio_sdk.converter.brush.encode_rle``): a 32-bit value count, the word
size minus one in 5 bits, the four run-length field sizes minus one in 4 bits each, then one
field per run of equal bytes in the RGBA-repeated mask: ``0 00 000 <byte>`` for a single value,
``1 <size index> <length - 1> <byte>`` for a series; zero-padded to whole bytes (always at least
one zero bit, as the SDK does).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: (longest run, index bits value, length bits) per series size, as the SDK's ``rle_sizes``;
#: longer runs use the last size, in fields of at most 65 536 (see :func:`_run_fields`).
_SIZES = ((8, 0, 3), (16, 1, 4), (256, 2, 8), (np.iinfo(np.int64).max, 3, 16))
_HEADER_WORDSIZE = 8


def mask_to_rle(mask: npt.NDArray[np.integer] | npt.NDArray[np.bool_]) -> list[int]:
    """The brush RLE of a 2-D uint8 mask (the alpha value of each pixel: 255 on the region)."""
    pixels = np.asarray(mask, dtype=np.uint8).ravel()
    runs, run_values = _runs(pixels)
    # The SDK encodes each value four times (RGBA): the same runs, four times as long.
    fields, widths = _run_fields(runs * 4, run_values)
    header = [(pixels.size * 4, 32), (_HEADER_WORDSIZE - 1, 5)] + [
        (size - 1, 4) for size in (3, 4, 8, 16)
    ]
    head_fields = np.array([f for f, _ in header], dtype=np.uint64)
    head_widths = np.array([w for _, w in header], dtype=np.int64)
    bits = _bits(np.concatenate([head_fields, fields]), np.concatenate([head_widths, widths]))
    pad = 8 - bits.size % 8  # 1..8 zero bits, exactly as the SDK pads
    bits = np.concatenate([bits, np.zeros(pad, dtype=np.uint8)])
    return list(np.packbits(bits).tolist())


def _runs(values: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
    return np.diff(np.append(-1, ends)).astype(np.int64), values[ends]


def _run_fields(
    runs: npt.NDArray[np.int64], values: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """One (field, width) per run; runs over 65 536 become several 65 536-long fields first."""
    full = np.where(runs > 1 << 16, (runs - 1) >> 16, 0)  # the SDK's while-loop iterations
    rest = runs - (full << 16)
    lengths = np.repeat(np.stack([np.full_like(runs, 1 << 16), rest], 1).ravel(),
                        np.stack([full, np.ones_like(runs)], 1).ravel())  # fmt: skip
    bytes_ = np.repeat(values, full + 1).astype(np.uint64)
    whole = np.repeat(runs, full + 1)  # the SDK picks every field's size by the whole run
    fields = bytes_.copy()  # a single value: 0 00 000 <byte>
    widths = np.full(lengths.shape, 14, dtype=np.int64)
    low = 1
    for longest, index, length_bits in _SIZES:
        series = (whole > low) & (whole <= longest)
        width = 1 + 2 + length_bits + 8
        head = (1 << (2 + length_bits)) | (index << length_bits)
        fields[series] = ((head | (lengths[series] - 1)).astype(np.uint64) << 8) | bytes_[series]
        widths[series] = width
        low = longest
    return fields, widths


def _bits(fields: npt.NDArray[np.uint64], widths: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Each field's ``width`` lowest bits, most significant first, all concatenated."""
    owner = np.repeat(np.arange(fields.size), widths)
    starts = np.cumsum(widths) - widths
    shift = (widths[owner] - 1 - (np.arange(owner.size) - starts[owner])).astype(np.uint64)
    return ((fields[owner] >> shift) & np.uint64(1)).astype(np.uint8)
