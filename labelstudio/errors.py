"""Why an image reference did not become an image, and the deadline every fetch keeps."""

from __future__ import annotations

import time

import httpx


class FetchError(Exception):
    """An image reference could not be turned into an image.

    ``reason`` is short and safe to show users (no tokens, no presigned query strings).
    ``status`` hints at the HTTP status an API reporting this error should use (400 refused or
    unsupported reference, 413 too large, 422 undecodable, 500 misconfigured, 502 upstream
    failure, 504 timeout); ``upstream_status`` is what the image host answered, if it answered.
    """

    def __init__(self, reason: str, *, status: int = 502, upstream_status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.upstream_status = upstream_status


def remaining(deadline: float, total: float) -> httpx.Timeout:
    """What is left of ``deadline`` (``time.monotonic()``) as a timeout; 504 when nothing is."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"timed out after {total:g}s", status=504)
    return httpx.Timeout(left)


def timed_out(total: float, url: httpx.URL) -> FetchError:
    return FetchError(f"timed out after {total:g}s fetching from {url.host}", status=504)


def too_large(limit: int, size: int | None = None) -> FetchError:
    what = f"image is {size:,} bytes" if size is not None else "image is larger"
    return FetchError(
        f"{what}, over the {limit:,}-byte limit (CLIPSAM_MAX_IMAGE_BYTES)", status=413
    )
