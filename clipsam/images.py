"""Turning whatever the caller has (path, bytes, PIL image, array) into one RGB uint8 array.

Every stage downstream works on ``H×W×3 uint8`` arrays in the image's *display* orientation
(EXIF transpose applied), because Label Studio reports sizes after EXIF transpose too.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = str | Path | bytes | Image.Image | np.ndarray

#: Pillow's own decompression-bomb guard is a warning at 89 Mpx; we make it an error at this size.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """An input could not be read as an image (broken, not an image, or too large)."""


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return ``source`` as a contiguous ``H×W×3 uint8`` RGB array, EXIF orientation applied.

    Raises :class:`ImageError` with the reason for broken files, non-image bytes, images over
    ``max_pixels`` (decompression bombs) and arrays of the wrong shape or dtype.
    """
    if isinstance(source, np.ndarray):
        return _check_array(source)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        stream: io.BytesIO | Path = io.BytesIO(bytes(source))
        name = f"<{len(source)} bytes>"
    else:
        stream = Path(source)
        name = str(source)
    try:
        with Image.open(stream) as img:
            _check_pixels(img.size, max_pixels, name)
            img.load()
            return _pil_to_rgb(img, max_pixels)
    except FileNotFoundError as exc:
        raise ImageError(f"image file not found: {name}") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image: {name} ({exc})") from exc
    except OSError as exc:  # truncated or corrupt data
        raise ImageError(f"broken image data in {name}: {exc}") from exc


def image_hash(image: np.ndarray) -> str:
    """Content hash of an RGB array: the key of the frozen-feature cache."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _pil_to_rgb(img: Image.Image, max_pixels: int) -> np.ndarray:
    _check_pixels(img.size, max_pixels, "image")
    img = ImageOps.exif_transpose(img) or img
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a decompression bomb, or raise the limit)"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{name} is empty ({width}×{height})")


def _check_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(f"image array must have shape H×W×3 (RGB), got {array.shape}")
    if array.dtype != np.uint8:
        raise ImageError(f"image array must be uint8, got {array.dtype}")
    return np.ascontiguousarray(array[:, :, :3])
