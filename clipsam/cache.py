"""Frozen-feature cache: CLIP tokens and SAM embeddings never change for an image, so keep them.

Entries are keyed by (backbone id, image content hash). A bounded in-memory LRU sits in front of
an optional on-disk store of safetensors files, shareable by processes. ``load_file`` maps a file
and returns views of the map (no copy): processes reading the same entry share its pages
through the OS page cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from clipsam.atomic import atomic_path

logger = logging.getLogger(__name__)

Entry = dict[str, Tensor]


class FeatureCache:
    """Thread-safe LRU of tensor dicts with an optional disk tier under ``disk_dir``."""

    def __init__(
        self,
        max_items: int = 64,
        disk_dir: str | Path | None = None,
        max_disk_bytes: int | None = None,
    ) -> None:
        self.max_items = max_items
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.max_disk_bytes = max_disk_bytes
        self._disk_bytes: int | None = None  # known after the first scan
        self._memory: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, namespace: str, key: str) -> Entry | None:
        with self._lock:
            entry = self._memory.get((namespace, key))
            if entry is not None:
                self._memory.move_to_end((namespace, key))
                self.hits += 1
                return entry
        entry = self._read_disk(namespace, key)
        with self._lock:
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
                self._remember((namespace, key), entry)
        return entry

    def put(self, namespace: str, key: str, entry: Entry) -> Entry:
        """Store ``entry`` (moved to the CPU); returns the stored copy."""
        entry = {name: t.detach().cpu().contiguous() for name, t in entry.items()}
        with self._lock:
            self._remember((namespace, key), entry)
        self._write_disk(namespace, key, entry)
        return entry

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()

    def __len__(self) -> int:
        return len(self._memory)

    def _remember(self, full_key: tuple[str, str], entry: Entry) -> None:
        self._memory[full_key] = entry
        self._memory.move_to_end(full_key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _path(self, namespace: str, key: str) -> Path | None:
        if self.disk_dir is None:
            return None
        space = hashlib.sha1(namespace.encode()).hexdigest()[:16]
        return self.disk_dir / space / key[:2] / f"{key}.safetensors"

    def _read_disk(self, namespace: str, key: str) -> Entry | None:
        path = self._path(namespace, key)
        if path is None or not path.is_file():
            return None
        try:
            entry = load_file(str(path))
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: pruned last
            return entry
        except (SafetensorError, OSError) as exc:
            logger.warning("dropping unreadable cache file %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None

    def _write_disk(self, namespace: str, key: str, entry: Entry) -> None:
        path = self._path(namespace, key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Not durable: a torn file after a crash is dropped on read and computed again.
            with atomic_path(path, durable=False, mode=None) as temp:
                save_file(entry, str(temp), metadata={"namespace": namespace})
            self._account(path.stat().st_size)
        except OSError as exc:  # a full disk must not fail a prediction
            logger.warning("could not write cache file %s: %s", path, exc)

    def _account(self, added: int) -> None:
        """Keep the disk tier under ``max_disk_bytes``: drop least recently used files."""
        if self.max_disk_bytes is None or self.disk_dir is None:
            return
        with self._lock:
            if self._disk_bytes is None:
                self._disk_bytes = sum(_stat(f)[1] for f in self._disk_files())
            else:
                self._disk_bytes += added
            if self._disk_bytes <= self.max_disk_bytes:
                return
            files = sorted((_stat(f), f) for f in self._disk_files())  # oldest use first
            total = sum(size for (_, size), _ in files)
            target = int(self.max_disk_bytes * 0.9)  # some room, so we do not prune every write
            for (_, size), file in files:
                if total <= target:
                    break
                file.unlink(missing_ok=True)  # another process may have pruned it already
                total -= size
            self._disk_bytes = total
        logger.info("feature cache pruned to %.1f GB under %s", total / 2**30, self.disk_dir)

    def _disk_files(self) -> list[Path]:
        assert self.disk_dir is not None
        return [f for f in self.disk_dir.glob("*/*/*.safetensors") if f.is_file()]


def _stat(path: Path) -> tuple[float, int]:
    """(mtime, size); a file another process just pruned counts as empty."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return 0.0, 0
    return info.st_mtime, info.st_size
