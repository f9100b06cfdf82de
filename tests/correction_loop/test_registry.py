"""ModelRegistry on real files and a real Redis, and its ``python -m training`` CLI.

``redis_server`` / ``redis_factory`` (tests/correction_loop/conftest.py) start a real redis-server.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest
import redis
import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from clipsam.heads import load_head, read_head_metadata
from correction_loop.head_files import (
    HEAD_FILE,
    META_FILE,
    SERVING_FILE,
    RegistryError,
    UnknownVersionError,
)
from correction_loop.redis_conn import embedded_path
from correction_loop.registry import ModelRegistry
from correction_loop.registry_cli import main
from tests.processes import free_port

METRICS = {"pixel_auroc": 0.91, "aupro": 0.8, "image_auroc": 0.95}


# ---- fixtures ------------------------------------------------------------------------------
def _no_retry(client: redis.Redis) -> redis.Redis:
    """Fail at once instead of redis-py's retries (3 s per stop of a server at teardown)."""
    client.set_retry(Retry(NoBackoff(), 0))
    return client


@pytest.fixture
def model_dir(tmp_path):
    return tmp_path / "model"


@pytest.fixture
def registry(model_dir):
    return ModelRegistry(model_dir)


@pytest.fixture
def make_head(tiny_pipeline):
    """Fresh UMCI heads for the tiny backbone; the same seed gives the same weights."""
    return tiny_pipeline.new_head


@pytest.fixture
def three(registry, make_head):
    """Three registered candidates A, B, C (a chain of parents)."""
    a = registry.register(make_head(1), {**METRICS, "pixel_auroc": 0.80}, parent=None)
    b = registry.register(make_head(2), {**METRICS, "pixel_auroc": 0.85}, parent=a.version)
    c = registry.register(make_head(3), {**METRICS, "pixel_auroc": 0.90}, parent=b.version)
    return a.version, b.version, c.version


def _serving_file(registry: ModelRegistry) -> dict | None:
    path = registry.heads_dir / SERVING_FILE
    return json.loads(path.read_text()) if path.exists() else None


# ---- register / versions ------------------------------------------------------------------
def test_register_writes_head_and_meta_and_dedupes(registry, make_head):
    head = make_head(1)
    v = registry.register(head, METRICS, parent=None, extra={"job": "j1"})

    assert v.version.startswith("umci-") and len(v.version) == len("umci-") + 12
    assert v.status == "candidate" and v.reason == "registered" and v.parent is None
    assert v.metrics == METRICS and v.extra == {"job": "j1"}
    folder = registry.heads_dir / v.version
    assert sorted(p.name for p in folder.iterdir()) == [HEAD_FILE, META_FILE]
    assert v.path == folder / HEAD_FILE and read_head_metadata(v.path)["version"] == v.version
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["status"] == "candidate" and meta["seq"] == 1 and meta["metrics"] == METRICS
    assert meta["backbone_id"] == head.backbone_id and meta["kind"] == "umci"
    # Staging folders and temp files are gone: only the version, the lock and the history.
    assert sorted(p.name for p in registry.heads_dir.iterdir()) == sorted(
        [v.version, ".lock", "history.jsonl"]
    )

    again = registry.register(make_head(1), {"pixel_auroc": 0.1}, parent="other")
    assert again.version == v.version and again.metrics == METRICS  # first registration wins
    assert [h.version for h in registry.versions()] == [v.version]
    assert [e["action"] for e in registry.history()] == ["register"]
    assert registry.register(make_head(2), METRICS, None).version != v.version


def test_register_refuses_bad_metrics_and_sweeps_only_stale_staging(registry, make_head):
    with pytest.raises(ValueError, match="metrics"):
        registry.register(make_head(1), {"pixel_auroc": "high"}, parent=None)
    assert registry.versions() == []

    registry.heads_dir.mkdir(parents=True, exist_ok=True)
    stale = registry.heads_dir / ".incoming-crashed"
    fresh = registry.heads_dir / ".incoming-running"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / HEAD_FILE).write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))

    v = registry.register(make_head(1), METRICS, parent=None)
    assert not stale.exists() and fresh.exists()  # a write in progress elsewhere is left alone
    assert [h.version for h in registry.versions()] == [v.version]


def test_versions_are_oldest_first_not_by_name(registry, make_head):
    order = [registry.register(make_head(s), METRICS, None).version for s in (5, 1, 3, 2)]
    assert [h.version for h in registry.versions()] == order
    assert registry.get(order[2]).version == order[2]
    with pytest.raises(UnknownVersionError):
        registry.get("umci-000000000000")
    with pytest.raises(UnknownVersionError):
        registry.get("../escape")


# ---- decide ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("candidate", "serving", "tolerance", "expected"),
    [
        ({"pixel_auroc": 0.90}, {"pixel_auroc": 0.90}, 0.0, True),  # equal is not worse
        ({"pixel_auroc": 0.91}, {"pixel_auroc": 0.90}, 0.0, True),
        ({"pixel_auroc": 0.89}, {"pixel_auroc": 0.90}, 0.0, False),
        ({"pixel_auroc": 0.89}, {"pixel_auroc": 0.90}, 0.02, True),
        ({"pixel_auroc": math.nan}, {"pixel_auroc": 0.10}, 0.0, False),
        ({"aupro": 0.99}, {"pixel_auroc": 0.10}, 0.0, False),  # candidate lacks the key
        ({"pixel_auroc": 0.10}, {"pixel_auroc": math.nan}, 0.0, True),
        ({"pixel_auroc": 0.10}, None, 0.0, True),  # no serving head
        ({"pixel_auroc": math.nan}, None, 0.0, False),
    ],
)
def test_decide(registry, candidate, serving, tolerance, expected):
    ok, reason = registry.decide("cand", candidate, serving, tolerance=tolerance)
    assert ok is expected
    assert reason.startswith(("promote cand" if expected else "reject cand") + ": pixel_auroc")
    if serving is not None and not math.isnan(serving["pixel_auroc"]):
        assert f"{serving['pixel_auroc']:.4f}" in reason


def test_decide_uses_key_and_rejects_nan_tolerance(registry):
    ok, reason = registry.decide("c", {"aupro": 0.5, "pixel_auroc": 0.99}, {"aupro": 0.6}, "aupro")
    assert not ok and "aupro 0.5000 < serving 0.6000" in reason
    with pytest.raises(ValueError, match="nan"):
        registry.decide("c", {"pixel_auroc": 1.0}, None, tolerance=math.nan)


# ---- promote / reject -----------------------------------------------------------------------
def test_promote_writes_serving_and_retires_previous(registry, three):
    a, b, _ = three
    assert registry.serving() is None and _serving_file(registry) is None

    registry.promote(a, "first")
    pointer = _serving_file(registry)
    assert pointer["version"] == a and pointer["path"] == f"heads/{a}/{HEAD_FILE}"
    assert registry.serving().version == a and registry.get(a).status == "promoted"

    promoted = registry.promote(b, "better")
    assert promoted.status == "promoted" and promoted.reason == "better"
    assert _serving_file(registry)["version"] == b and registry.serving().version == b
    assert (registry.get(a).status, registry.get(a).reason) == ("retired", f"replaced by {b}")
    promotions = [e for e in registry.history() if e["action"] == "promote"]
    assert [(e["version"], e["previous"], e["reason"]) for e in promotions] == [
        (a, None, "first"),
        (b, a, "better"),
    ]
    with pytest.raises(UnknownVersionError):
        registry.promote("umci-ffffffffffff", "nope")
    assert registry.serving().version == b


def test_reject_keeps_files_and_refuses_the_serving_head(registry, three):
    a, b, _ = three
    rejected = registry.reject(b, "reject b: pixel_auroc 0.85 < serving 0.90")
    assert rejected.status == "rejected" and rejected.reason.startswith("reject b")
    assert registry.get(b).status == "rejected" and (registry.heads_dir / b / HEAD_FILE).is_file()
    assert b in [h.version for h in registry.versions()]
    assert registry.history()[-1] == {**registry.history()[-1], "action": "reject", "version": b}

    registry.promote(a, "ok")
    with pytest.raises(RegistryError, match="is serving"):
        registry.reject(a, "too late")
    assert registry.get(a).status == "promoted" and registry.serving().version == a


# ---- rollback -------------------------------------------------------------------------------
def test_rollback_walks_promotions_back_to_training_free(registry, three):
    a, b, c = three
    for v in three:
        registry.promote(v, "up")

    assert registry.rollback().version == b
    assert registry.serving().version == b and registry.get(c).status == "retired"
    assert registry.get(b).reason == f"restored by rollback of {c}"
    assert registry.rollback().version == a
    assert registry.serving().version == a and registry.get(b).status == "retired"
    assert registry.rollback() is None
    assert registry.serving() is None and _serving_file(registry) is None
    assert registry.get(a).status == "retired"

    entries = len(registry.history())
    assert registry.rollback() is None  # nothing left: nothing changes
    assert len(registry.history()) == entries
    rollbacks = [(e["version"], e["previous"]) for e in registry.history()[-3:]]
    assert rollbacks == [(b, c), (a, b), (None, a)]


def test_rollback_skips_deleted_and_rejected_heads(registry, three, make_head):
    a, b, c = three
    d = registry.register(make_head(4), METRICS, None).version
    for v in (a, b, c, d):
        registry.promote(v, "up")
    shutil.rmtree(registry.heads_dir / b)  # B vanished from disk
    registry.reject(c, "bad after all")  # C was served once, then found bad

    assert registry.rollback().version == a
    assert registry.get(c).status == "rejected"
    registry.promote(d, "again")
    assert registry.rollback().version == a
    assert registry.rollback() is None


# ---- Redis ---------------------------------------------------------------------------------
def test_promotion_is_published_and_serving_key_set(model_dir, redis_server, make_head):
    registry = ModelRegistry(model_dir, _no_retry(redis_server))
    a = registry.register(make_head(1), METRICS, None).version
    assert not redis_server.exists(registry.blob_key(a))  # a candidate stays on this disk
    pubsub = redis_server.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(registry.channel)
    assert pubsub.get_message(timeout=1.0) is None  # consumes the subscribe confirmation

    registry.promote(a, "up")
    message = pubsub.get_message(timeout=5.0)
    assert message is not None and message["channel"] == b"clipsam:head_promotions"
    data = json.loads(message["data"])
    assert data == {"version": a, "path": str(model_dir.absolute() / "heads" / a / HEAD_FILE)}
    assert json.loads(redis_server.get("clipsam:serving_head")) == data
    head_file = model_dir / "heads" / a / HEAD_FILE
    assert redis_server.get(registry.blob_key(a)) == head_file.read_bytes()  # for other hosts

    registry.rollback()
    gone = json.loads(pubsub.get_message(timeout=5.0)["data"])
    assert gone == {"version": None, "path": None}
    assert json.loads(redis_server.get("clipsam:serving_head"))["version"] is None
    pubsub.close()


def test_redis_down_still_promotes(model_dir, make_head):
    dead = _no_retry(redis.Redis(port=free_port(), socket_connect_timeout=0.5))
    with pytest.raises(redis.ConnectionError):
        dead.ping()
    registry = ModelRegistry(model_dir, dead)
    a = registry.register(make_head(1), METRICS, None).version
    assert registry.promote(a, "up").status == "promoted"
    assert _serving_file(registry)["version"] == a
    assert ModelRegistry(model_dir).serving().version == a  # another process sees it


# ---- damage ---------------------------------------------------------------------------------
def test_torn_history_line_is_tolerated(registry, three):
    a, b, c = three
    registry.promote(a, "up")
    registry.promote(b, "up")
    history = registry.heads_dir / "history.jsonl"
    with open(history, "ab") as f:
        f.write(b'{"time": "2024-01-01", "action": "prom')  # crash mid-append
    assert [e["action"] for e in registry.history()][-2:] == ["promote", "promote"]

    registry.promote(c, "up")
    lines = history.read_text().splitlines()
    assert lines[-2] == '{"time": "2024-01-01", "action": "prom'  # ended, not glued to
    assert json.loads(lines[-1])["version"] == c
    assert registry.history()[-1]["version"] == c
    assert registry.rollback().version == b


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_corrupted_head_file_is_never_promoted(registry, three, damage):
    a, b, _ = three
    registry.promote(a, "up")
    path = registry.heads_dir / b / HEAD_FILE
    if damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()
    with pytest.raises(RegistryError, match=f"refusing to serve head {b}"):
        registry.promote(b, "up")
    assert registry.serving().version == a and registry.get(b).status == "candidate"
    assert [e["version"] for e in registry.history() if e["action"] == "promote"] == [a]


def test_serving_head_loads_with_identical_outputs(registry, make_head, tiny_pipeline):
    head = make_head(7)
    other = make_head(8)
    v = registry.register(head, METRICS, None).version
    registry.register(other, METRICS, None)
    registry.promote(v, "up")

    loaded = load_head(registry.serving().path, tiny_pipeline.clip.backbone_id)
    assert loaded.version == v
    clip = tiny_pipeline.clip
    gen = torch.Generator().manual_seed(0)
    tokens = clip.grid * clip.grid
    features = {
        "stages": torch.randn(2, len(clip.config.layers), tokens, clip.width, generator=gen),
        "vv": torch.randn(2, tokens, clip.embed_dim, generator=gen),
    }
    text = torch.nn.functional.normalize(torch.randn(2, clip.embed_dim, generator=gen), dim=-1)
    with torch.inference_mode():
        expected = head.eval()(features, text)
        got = loaded(features, text)
        different = other.eval()(features, text)
    assert got.shape == (2, len(clip.config.layers), 2, clip.grid, clip.grid)
    assert torch.equal(got, expected)
    assert not torch.allclose(different, expected)


# ---- CLI ------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _no_redis_url(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)  # the CLI's default: no Redis unless embedded


def _cli(capsys, model_dir, *args):
    code = main(["--model-dir", str(model_dir), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_versions_promote_rollback(capsys, registry, model_dir, three):
    a, b, c = three
    registry.promote(a, "up")

    code, out, _ = _cli(capsys, model_dir, "versions")
    assert code == 0
    lines = {line.lstrip("* ").split()[0]: line for line in out.splitlines()[1:-1]}
    assert set(lines) == {a, b, c}
    assert lines[a].startswith("*") and not lines[b].startswith("*")
    assert "0.8000" in lines[a] and "0.9000" in lines[c] and b in lines[c]  # metrics, parent
    assert out.splitlines()[0].split()[:4] == ["version", "status", "created", "pixel_auroc"]
    assert out.splitlines()[-1] == f"serving: {a}"

    code, out, _ = _cli(capsys, model_dir, "promote", c)
    assert code == 0 and f"serving {c}" in out and "no Redis" in out
    assert (
        registry.serving().version == c and registry.history()[-1]["reason"] == "promoted by hand"
    )
    code, out, _ = _cli(capsys, model_dir, "promote", b, "--reason", "looks better")
    assert code == 0
    assert registry.serving().version == b and registry.get(b).reason == "looks better"

    code, out, _ = _cli(capsys, model_dir, "rollback")
    assert code == 0 and f"rolled back {b}; now serving {c}" in out
    assert registry.serving().version == c

    code, out, _ = _cli(capsys, model_dir, "versions", "--json")
    data = json.loads(out)
    assert data["serving"] == c
    assert [(r["version"], r["serving"]) for r in data["versions"]] == [
        (a, False),
        (b, False),
        (c, True),
    ]

    code, out, _ = _cli(capsys, model_dir, "history")
    assert code == 0 and f"rollback  {c} (was {b}): rolled back {b}" in out.splitlines()[-1]


def test_cli_unknown_version_exits_2(capsys, registry, model_dir, three):
    a, *_ = three
    registry.promote(a, "up")
    code, out, err = _cli(capsys, model_dir, "promote", "umci-deadbeef0000")
    assert code == 2
    assert "unknown head version 'umci-deadbeef0000'" in err and "Traceback" not in err + out
    assert registry.serving().version == a


def test_cli_rollback_to_training_free_and_nothing_left(capsys, registry, model_dir, three):
    registry.promote(three[0], "up")
    code, out, _ = _cli(capsys, model_dir, "rollback")
    assert code == 0 and "now serving the training-free head" in out
    assert registry.serving() is None
    code, out, _ = _cli(capsys, model_dir, "rollback")
    assert code == 0 and "nothing to roll back" in out


def test_cli_uses_existing_embedded_redis(capsys, model_dir, three, redis_factory):
    path = embedded_path(model_dir)
    code, out, _ = _cli(capsys, model_dir, "promote", three[1])
    assert code == 0 and "no Redis" in out  # no backend ever ran here: the files alone
    assert not path.parent.exists()  # and no server was started as a side effect

    path.parent.mkdir(parents=True)
    server = _no_retry(redis_factory(str(path.relative_to(model_dir.parent))))  # a backend's server
    pubsub = server.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("clipsam:head_promotions")
    assert pubsub.get_message(timeout=1.0) is None
    code, out, _ = _cli(capsys, model_dir, "promote", three[2])
    assert code == 0 and "no Redis" not in out
    message = pubsub.get_message(timeout=5.0)
    assert message is not None and json.loads(message["data"])["version"] == three[2]
    assert json.loads(server.get("clipsam:serving_head"))["version"] == three[2]
    pubsub.close()
