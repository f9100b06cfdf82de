"""clipsam.atomic: one way to replace a file, whole or not at all, for every layer."""

from __future__ import annotations

import json
import os
import stat

import pytest

from clipsam import atomic


def test_replaces_whole_with_readable_mode_and_no_leftovers(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text("old")
    atomic.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "head.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["head.safetensors"]


def test_durable_fsyncs_file_then_folder_and_cache_writes_do_not(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    assert len(synced) == 2
    assert synced[0].startswith(str(tmp_path / ".a.txt.")) and synced[0].endswith(".tmp")
    assert synced[1] == str(tmp_path)
    synced.clear()
    atomic.atomic_write_bytes(tmp_path / "b.bin", b"y", durable=False, mode=None)
    assert synced == []
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600  # mkstemp's, kept


def test_fsync_path_strictness(tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(FileNotFoundError):
        atomic.fsync_path(missing)
    atomic.fsync_path(missing, strict=False)  # best effort: ignored
    atomic.fsync_path(tmp_path)  # a folder
