"""The corrected images, fetched once per model dir: retrains and the few-shot memory read them
from ``MODEL_DIR/images`` instead of asking Label Studio or the image host again."""

from __future__ import annotations

import hashlib
from pathlib import Path

from clipsam.atomic import atomic_write_bytes
from labelstudio.fetch import ImageFetcher


def cached_fetch(reference: str, task_id: int, fetcher: ImageFetcher, cache: Path) -> bytes:
    """Each image is fetched once per model dir; retrains read it from disk."""
    path = cache / f"{hashlib.sha256(reference.encode()).hexdigest()[:40]}.img"
    if path.is_file():
        return path.read_bytes()
    data = fetcher.fetch_bytes(reference, task_id=task_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data, durable=False)  # a cache: lost, it is fetched again
    return data
