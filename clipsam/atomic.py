"""Atomic file replacement: a reader sees the old file or the new one, never half of either.

Every layer writes files this way (heads, the feature cache, registry pointers and metadata,
offsets, prelabel outputs), so it lives at the bottom, with no dependency above the standard
library. The new content goes to a temporary file in the target's folder (same filesystem, so
``os.replace`` is atomic), is fsynced when it must survive a crash, and then replaces the
target; the folder is fsynced after the rename so the new name survives too. A failure at any
point removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Temporary files are named ``.<target name>.<random>.tmp``: hidden, and recognisable by the
#: ``.tmp`` suffix to whoever sweeps a folder after a crash.
TEMP_SUFFIX = ".tmp"


def fsync_path(path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Make a file's contents, or a folder's entries, durable.

    ``strict=False`` ignores an ``OSError`` (a filesystem that cannot fsync a folder, say), for
    callers whose durability is best effort.
    """
    path = Path(path)
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        descriptor = os.open(path, flags)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError:
        if strict:
            raise


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, durable: bool = True, mode: int | None = 0o644
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an exception, the
    file written there replaces ``path`` atomically. For writers that want a file name (e.g.
    safetensors' ``save_file``); :func:`atomic_write_bytes` and friends wrap it.

    ``durable``: fsync the file before the rename and the folder after it (off for caches,
    whose torn files are simply dropped). ``mode``: the file's permissions (``mkstemp`` makes it
    private; readers may be other users' processes); ``None`` keeps ``mkstemp``'s 0600.
    The folder must exist.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        if mode is not None:
            os.chmod(temp, mode)
        if durable:
            fsync_path(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    if durable:
        fsync_path(path.parent)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, durable: bool = True, mode: int | None = 0o644
) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, durable=durable, mode=mode) as temp:
        temp.write_bytes(data)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, durable: bool = True, mode: int | None = 0o644
) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable, mode=mode)


def atomic_write_json(
    path: str | os.PathLike[str],
    data: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = True,
    durable: bool = True,
    mode: int | None = 0o644,
) -> None:
    """Replace ``path`` with ``data`` as JSON (and a final newline) atomically."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n"
    atomic_write_text(path, text, durable=durable, mode=mode)
