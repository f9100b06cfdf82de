"""The retrain job itself, in-process: what it trains on, what it caches, what it records."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from clipsam.data import load_mask, make_synthetic_dataset, read_mvtec
from clipsam.data.world import render_sample
from clipsam.heads import load_head
from clipsam.images import load_image
from clipsam.pipeline_cache import shared_pipeline
from correction_loop import retrain
from correction_loop.corrections import correction_from_event
from correction_loop.registry import ModelRegistry
from correction_loop.retrain import MIN_STEPS, is_held_out, retrain_job
from correction_loop.store import CorrectionStore
from tests.helpers import annotation_event
from training.defect_types import type_accuracy, type_examples
from training.trainer import TrainConfig


class _CountingFiles(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def served(tmp_path: Path):
    """10 synthetic widgets over HTTP, stored as corrections of project 3 (plus one dead link)."""
    root = make_synthetic_dataset(tmp_path / "data", categories=("widget",), n_good=2,
                                  n_defect=8, seed=11)  # fmt: skip
    _CountingFiles.requests = []
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: _CountingFiles(*a, directory=str(root), **k)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    events = []
    for index, sample in enumerate(read_mvtec(root, split="test")):
        mask = load_mask(sample, load_image(sample.image_path).shape[:2])
        link = f"{url}/{sample.image_path.relative_to(root).as_posix()}"
        events.append(annotation_event(index + 1, index + 1, link, mask))
    events.append(annotation_event(99, 99, f"{url}/gone.png", mask))
    yield events
    server.shutdown()


def _job(model_dir: Path, redis_server, **kwargs):
    return retrain_job(
        project="3", reason="test", model_dir=str(model_dir), preset="tiny",
        pipeline_overrides={"use_sam": False, "weights": "random"}, redis_url=f"unix://{redis_server.socket_file}",
        settings={"allowed_hosts": ["127.0.0.1"]}, holdout=0.3, **{"epochs": 2, **kwargs},
    )  # fmt: skip


def test_a_job_trains_on_corrections_and_base_data_and_records_why(tmp_path, redis_server, served):
    store = CorrectionStore(redis_server)
    for event in served:
        store.upsert(correction_from_event(event))
    base = make_synthetic_dataset(tmp_path / "base", categories=("widget",), n_good=1,
                                  n_defect=3, seed=12)  # fmt: skip
    model_dir = tmp_path / "model_dir"
    summary = _job(model_dir, redis_server, base_data=[f"mvtec:{base}"])

    held = [e for e in served if is_held_out(e["annotation"]["id"], 0.3)]
    usable_held = [e for e in held if e["annotation"]["id"] != 99]
    trained = len(served) - 1 - len(usable_held)  # the dead link is skipped, not fatal
    assert 0 < len(usable_held) < len(served) - 1
    assert summary["held_out"] == len(usable_held)
    assert summary["train"] == trained + 4  # corrections + the 4 base images
    assert summary["status"] == "promoted"  # the first trained head beats the training-free one
    registry = ModelRegistry(model_dir)
    versions = {v.version: v for v in registry.versions()}
    version = versions[summary["version"]]
    assert version.status == "promoted" and registry.serving() == version
    assert version.extra["train"] == summary["train"] and version.metrics["pixel_auroc"] > 0
    # The first epoch that passed the gate served while training went on; the best replaced it.
    early = summary["early"]
    print("early promotion", early, "best epoch", summary["best_epoch"], summary["seconds"], "s")
    assert early is not None and early["seconds"] < summary["seconds"]
    assert 1 <= early["epoch"] <= summary["best_epoch"]
    if early["version"] == summary["version"]:  # the best epoch was the early one
        assert early["epoch"] == summary["best_epoch"] and len(versions) == 1
    else:
        assert versions[early["version"]].status == "retired" and len(versions) == 2
        assert version.parent == early["version"] and versions[early["version"]].extra["epoch"]
    assert "no serving head" not in summary["reason"] and "serving" in summary["reason"]
    assert store.pending("3") == 0

    # The first head was fresh: it trained at least MIN_STEPS steps (2 batches of 11 a epoch).
    assert not summary["warm_start"] and summary["epochs"] >= MIN_STEPS // 2

    # A second job trains from the promoted head (a warm start: no floor of steps, at most
    # `warm_epochs`) and fetches no image again (cached).
    fetched = len(_CountingFiles.requests)
    second = _job(model_dir, redis_server, patience=None, warm_epochs=3)
    assert len(_CountingFiles.requests) - fetched == 1  # only the dead link is retried
    assert ModelRegistry(model_dir).get(second["version"]).parent == summary["version"]
    assert second["warm_start"] and second["epochs"] == 3

    # Early stopping: the epoch with the lowest held-out loss is kept (the serving head, warm
    # started from, is epoch 0: kept, it is the same head, not a new version), and one more
    # epoch without improvement ends the run.
    serving = ModelRegistry(model_dir).serving()
    third = _job(model_dir, redis_server, patience=1, warm_epochs=4)
    assert third["best_epoch"] is not None and second["best_epoch"] is None
    assert third["epochs"] <= third["best_epoch"] + 1
    if third["best_epoch"] == 0:  # the serving head is neither re-judged nor rejected
        assert serving is not None and third["version"] == serving.version
        assert third["status"] == "unchanged"
        assert ModelRegistry(model_dir).serving() == serving


@pytest.mark.slow
@pytest.mark.parametrize("break_it", ["corrupting learning rate", "training masks shuffled"])
def test_a_warm_start_never_promotes_a_worse_head(tmp_path, redis_server, served, monkeypatch,
                                                  break_it):  # fmt: skip
    """From a good serving head, a retrain that can only make it worse ends "unchanged" (early
    stopping kept the serving head, epoch 0) or "rejected" (the gate), never "promoted": with
    early stopping, and with it off, where the gate alone must catch it."""
    store = CorrectionStore(redis_server)
    for event in served:
        store.upsert(correction_from_event(event))
    model_dir = tmp_path / "model_dir"
    good = _job(model_dir, redis_server)
    assert good["status"] == "promoted"
    serving = ModelRegistry(model_dir).serving()
    assert serving is not None and serving.version == good["version"]
    if break_it == "corrupting learning rate":
        monkeypatch.setattr(retrain, "TrainConfig", functools.partial(TrainConfig, lr=10.0))
    else:  # the training corrections get each other's masks; the held-out ones stay right
        train = [e for e in served[:-1] if not is_held_out(e["annotation"]["id"], 0.3)]
        results = [e["annotation"]["result"] for e in train]
        for event, result in zip(train, results[1:] + results[:1], strict=True):
            store.upsert(correction_from_event({**event, "annotation": {
                **event["annotation"], "result": result}}))  # fmt: skip
    outcomes = {}
    for patience in (retrain.PATIENCE, None):  # the default early stopping, then the gate alone
        summary = _job(model_dir, redis_server, patience=patience, warm_epochs=4)
        assert summary["warm_start"], summary
        outcomes[patience] = summary["status"]
        assert ModelRegistry(model_dir).serving() == serving, summary
    print(break_it, outcomes)
    assert outcomes[retrain.PATIENCE] in ("unchanged", "rejected"), outcomes
    assert outcomes[None] == "rejected", outcomes


def test_a_job_without_usable_corrections_changes_nothing(tmp_path, redis_server, served):
    store = CorrectionStore(redis_server)
    store.upsert(correction_from_event(served[-1]))  # only the dead link
    summary = _job(tmp_path / "model_dir", redis_server)
    assert summary["status"] == "skipped" and "no usable corrections" in summary["reason"]
    assert ModelRegistry(tmp_path / "model_dir").versions() == []
    assert store.pending("3") == 0


def test_a_small_project_still_holds_one_correction_out():
    from correction_loop.corrections import Correction
    from correction_loop.retrain import split_corrections

    corrections = [
        Correction(annotation_id=i, task_id=i, project="3", image=f"{i}.png", category=None,
                   mask_rle=None)
        for i in range(1, 11)
    ]  # fmt: skip
    assert not any(is_held_out(c.annotation_id, 0.02) for c in corrections)  # 2 % of 10: none
    train, held = split_corrections(corrections, 0.02)
    assert len(held) == 1 and len(train) == 9 and held[0] not in train
    assert split_corrections(corrections, 0.02) == (train, held)  # stable
    assert split_corrections(corrections, 0.0) == (corrections, [])  # opted out: none
    alone_train, alone_held = split_corrections(corrections[:1], 0.02)
    assert len(alone_train) + len(alone_held) == 1  # one correction is never in both


@pytest.fixture
def typed_served(tmp_path: Path):
    """16 hex nuts over HTTP, scratches and spots by turns: (url, [(mask, true label)], the
    generator that drew them, for more of the same)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    samples = []
    for index in range(16):
        kind = ("scratch", "spot")[index % 2]
        sample = render_sample("hex nut", rng, (128, 128), (kind,))
        Image.fromarray(sample.image).save(folder / f"{index}.png")
        samples.append((sample.mask, kind.capitalize()))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: _CountingFiles(*a, directory=str(folder), **k)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", samples, rng
    server.shutdown()


def _store_typed(redis_server, url: str, samples, swap: dict[str, str] | None = None) -> None:
    store = CorrectionStore(redis_server)
    for index, (mask, label) in enumerate(samples):
        label = (swap or {}).get(label, label)
        event = annotation_event(index + 1, index + 1, f"{url}/{index}.png", mask,
                                 category="hex nut", label=label)  # fmt: skip
        store.upsert(correction_from_event(event))


@pytest.mark.slow
def test_a_job_learns_defect_types_from_labelled_regions(tmp_path, redis_server, typed_served):
    """Scratches and spots labelled as such: the new head carries a classifier of both, and it
    types the held-out corrections' regions (shape tells a line from a blob even with random
    CLIP weights); the same corrections with the labels swapped teach the opposite."""
    url, samples, rng = typed_served
    heads, held_out = {}, {}
    for run, swap in (("right", {}), ("swapped", {"Scratch": "Spot", "Spot": "Scratch"})):
        _store_typed(redis_server, url, samples, swap)
        model_dir = tmp_path / run
        summary = _job(model_dir, redis_server, min_steps=0)  # the types are what counts
        head = load_head(ModelRegistry(model_dir).get(summary["version"]).path)
        assert head.type_classifier is not None
        assert head.type_classifier.labels == ("Scratch", "Spot")
        assert sum(head.type_classifier.examples) >= 8
        heads[run] = head
        held_out[run] = summary["metrics"]["type_accuracy"]
    pipeline = shared_pipeline("tiny", {"use_sam": False, "weights": "random"})  # the job's own
    fresh = []
    for index in range(8):  # new images, their true types
        kind = ("scratch", "spot")[index % 2]
        sample = render_sample("hex nut", rng, (128, 128), (kind,))
        fresh += type_examples(pipeline, sample.image, {kind.capitalize(): sample.mask}, "hex nut")
    accuracies = {
        run: type_accuracy(pipeline, head.type_classifier, fresh, ["Scratch", "Spot"])
        for run, head in heads.items()
    }
    print("held-out type accuracy", held_out, "on new images", accuracies)
    assert held_out["right"] >= 0.8 and accuracies["right"] >= 0.8, (held_out, accuracies)
    assert accuracies["swapped"] <= 0.2, accuracies  # it learns what it is taught


@pytest.mark.slow
def test_types_learned_by_a_rejected_retrain_still_serve(
    tmp_path, redis_server, typed_served, monkeypatch
):
    """The gate rejects the retrained map head, but the defect types it learned from the
    corrections serve at once, on the head that stays: its map weights unchanged."""
    url, samples, _ = typed_served
    model_dir = tmp_path / "models"
    registry = ModelRegistry(model_dir, redis_server)
    pipeline = shared_pipeline("tiny", {"use_sam": False, "weights": "random"})  # the job's own
    serving = registry.register(pipeline.new_head(0, kind="umci"), {}, parent=None)
    registry.promote(serving.version, "a trained head serves")
    rejected = []

    def reject_every_map_head(self, candidate, *args, **kwargs):
        rejected.append(candidate)
        return False, f"reject {candidate}: the test's gate"

    monkeypatch.setattr(ModelRegistry, "decide", reject_every_map_head)
    _store_typed(redis_server, url, samples)
    summary = _job(model_dir, redis_server, min_steps=0, warm_epochs=1, promote_early=False)
    assert summary["status"] == "rejected" and rejected, summary
    now = registry.serving()
    assert now is not None and now.version == summary["types_version"] != serving.version
    assert now.parent == serving.version
    head, before = load_head(now.path), load_head(serving.path)
    assert head.type_classifier is not None
    assert head.type_classifier.labels == ("Scratch", "Spot")
    weights, old = head.state_dict(), before.state_dict()
    assert all(torch.equal(weights[name], old[name]) for name in old), "map weights changed"
