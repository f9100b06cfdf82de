"""``python -m backend.prelabel``: folders and datasets become Label Studio import files with
valid predictions, in a stable order; a stopped run resumes without redoing work; rq workers give
the same file as the in-process run; bad input exits 2 with a clear message.

Tiny preset, SAM off (a random-weight SAM would make regions depend on noise); real files,
real embedded Redis, real rq workers.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image
from rq import Queue

from backend.prelabel import main
from clipsam.data import make_synthetic_dataset, open_dataset
from correction_loop.keys import PRELABEL_QUEUE as QUEUE_NAME
from correction_loop.redis_conn import connect, release

MODEL = ["--preset", "tiny", "--config", '{"use_sam": false, "weights": "random"}', "--quiet"]
VERSION = "clipsam-tiny-zero-shot"
CUSTOM_CONFIG = """<View>
  <Image name="photo" value="$img"/>
  <BrushLabels name="defects" toName="photo"><Label value="Other"/><Label value="Scratch"/></BrushLabels>
  <Choices name="verdict" toName="photo"><Choice value="OK"/><Choice value="NG"/></Choices>
</View>"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 128×128 widget images (2 good, 4 defective) in MVTec-AD layout."""
    root = tmp_path_factory.mktemp("prelabel_data")
    return make_synthetic_dataset(root, categories=("widget",), n_good=2, n_defect=4, seed=0)


def prelabel(tmp_path: Path, *args: str) -> int:
    """Run the CLI in this process with the test model and a private model dir."""
    return main([*MODEL, "--model-dir", str(tmp_path / "model_dir"), *args])


def check_brush(item: dict[str, Any], image: Path, name: str, to: str, label: str) -> None:
    """A brush item Label Studio can show: right names, label and an RLE of the image's size."""
    width, height = Image.open(image).size
    assert item["from_name"] == name and item["to_name"] == to, item
    assert (item["original_width"], item["original_height"]) == (width, height)
    assert item["value"]["format"] == "rle" and item["value"]["brushlabels"] == [label]
    pixels = np.asarray(decode_rle(item["value"]["rle"]), dtype=np.uint8)
    assert pixels.size == width * height * 4
    assert pixels.reshape(height, width, 4)[:, :, 3].any(), "empty brush region"


def test_folder_source_gives_one_task_per_image(tmp_path: Path, dataset: Path) -> None:
    """Recursive, sorted, referenced through --url-prefix, with the README config's items."""
    folder = dataset / "widget" / "test"
    out = tmp_path / "tasks.json"
    prefix = "/data/local-files/?d=widget/test/"
    assert prelabel(tmp_path, "--folder", str(folder), "--category", "widget",
                    "--url-prefix", prefix, "--out", str(out)) == 0  # fmt: skip
    tasks = json.loads(out.read_text())
    images = sorted(p for p in folder.rglob("*.png"))
    assert len(images) == 6
    assert [t["data"] for t in tasks] == [
        {"image": prefix + quote(p.relative_to(folder).as_posix()), "category": "widget"}
        for p in images
    ]
    brushes = 0
    for task, image in zip(tasks, images, strict=True):
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == VERSION
        assert 0.0 <= prediction["score"] <= 1.0
        kinds = [item["type"] for item in prediction["result"]]
        assert set(kinds) <= {"brushlabels", "choices"} and kinds.count("choices") == 1
        for item in prediction["result"]:
            if item["type"] == "brushlabels":
                check_brush(item, image, "defect", "image", "Defect")
                brushes += 1
            else:
                assert item["from_name"] == "verdict" and item["to_name"] == "image"
                assert item["value"]["choices"][0] in ("Good", "Defective")
    assert brushes >= 6, "expected brush regions on these images"


def test_mvtec_source_follows_the_label_config(tmp_path: Path, dataset: Path) -> None:
    """Data key, control names and the defect label come from --label-config; order is the
    reader's, paths are absolute by default, and a second run writes the same file."""
    config = tmp_path / "config.xml"
    config.write_text(CUSTOM_CONFIG)
    out = tmp_path / "tasks.json"
    args = ["--data", f"mvtec:{dataset}", "--label-config", str(config),
            "--defect-label", "Scratch", "--out", str(out)]  # fmt: skip
    assert prelabel(tmp_path, *args) == 0
    samples = open_dataset(f"mvtec:{dataset}")
    tasks = json.loads(out.read_text())
    assert [t["data"] for t in tasks] == [
        {"img": str(s.image_path.resolve()), "category": "widget"} for s in samples
    ]
    for task, sample in zip(tasks, samples, strict=True):
        (prediction,) = task["predictions"]
        for item in prediction["result"]:
            if item["type"] == "brushlabels":
                check_brush(item, sample.image_path, "defects", "photo", "Scratch")
            else:
                assert item["value"]["choices"][0] in ("OK", "NG")
    first = out.read_bytes()
    out.unlink()
    assert prelabel(tmp_path, *args, "--fresh") == 0
    assert out.read_bytes() == first


def test_resume_skips_finished_items(tmp_path: Path, dataset: Path) -> None:
    """A run stopped after two items (plus a torn third line) finishes the rest only, and the
    final file is the same as an uninterrupted run's."""
    out = tmp_path / "tasks.json"
    progress = tmp_path / "tasks.json.progress.jsonl"
    args = ["--data", f"mvtec:{dataset}", "--chunk-size", "2", "--out", str(out)]
    assert prelabel(tmp_path, *args) == 0
    complete = out.read_bytes()
    lines = progress.read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 6  # header + one line per image

    kept = b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2]  # as if killed mid-write
    progress.write_bytes(kept)
    out.unlink()
    assert prelabel(tmp_path, *args) == 0
    assert out.read_bytes() == complete
    resumed = progress.read_bytes().splitlines(keepends=True)
    assert resumed[:3] == lines[:3], "finished items were rewritten"
    keys = [json.loads(line)["key"] for line in resumed[1:]]
    assert len(keys) == 6 == len(set(keys)), "an item was predicted twice"

    # Nothing left to do: the rerun only rewrites the file (no model, no new lines).
    out.unlink()
    assert prelabel(tmp_path, *args) == 0
    assert out.read_bytes() == complete and progress.read_bytes() == b"".join(resumed)


def test_progress_of_another_run_is_refused(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mixing two models' predictions in one file is refused until --fresh."""
    out = tmp_path / "tasks.json"
    args = ["--data", f"mvtec:{dataset}", "--categories", "widget", "--out", str(out)]
    assert prelabel(tmp_path, *args) == 0
    capsys.readouterr()
    assert prelabel(tmp_path, *args, "--verdict-threshold", "0.9") == 2
    err = capsys.readouterr().err
    assert "another run" in err and "verdict_threshold" in err, err
    assert prelabel(tmp_path, *args, "--verdict-threshold", "0.9", "--fresh") == 0


def test_workers_give_the_same_file(tmp_path: Path, dataset: Path) -> None:
    """--workers 2 through real rq workers on the embedded Redis == the in-process run."""
    args = ["--data", f"mvtec:{dataset}", "--chunk-size", "2"]
    local = tmp_path / "local.json"
    assert prelabel(tmp_path, *args, "--out", str(local)) == 0

    redis_dir = tmp_path / "redis_home"
    client = connect(None, redis_dir)
    try:
        fanned = tmp_path / "fanned.json"
        result: list[int] = []
        run = threading.Thread(target=lambda: result.append(main([
            *MODEL, "--model-dir", str(redis_dir), *args, "--workers", "2", "--out", str(fanned),
        ])))  # fmt: skip
        run.start()
        while run.is_alive():  # rq workers in this (main) thread, until the run is collected
            assert main(["--worker", "--burst", "--model-dir", str(redis_dir)]) == 0
            run.join(timeout=0.2)
        assert result == [0]
        assert fanned.read_bytes() == local.read_bytes()
        queue = Queue(QUEUE_NAME, connection=client)
        assert queue.count == 0 and not queue.finished_job_registry.get_job_ids()
    finally:
        release(client)


def test_a_failing_worker_fails_the_run(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker that cannot load the model: exit 1 with its reason, no jobs left in Redis."""
    redis_dir = tmp_path / "redis_home"
    client = connect(None, redis_dir)
    try:
        out = tmp_path / "tasks.json"
        result: list[int] = []
        run = threading.Thread(target=lambda: result.append(main([
            *MODEL, "--config", '{"weights": "pretrained", "clip_pretrained": ""}', "--model-dir", str(redis_dir),
            "--data", f"mvtec:{dataset}", "--chunk-size", "2", "--workers", "1",
            "--out", str(out),
        ])))  # fmt: skip
        run.start()
        while run.is_alive():
            assert main(["--worker", "--burst", "--model-dir", str(redis_dir)]) == 0
            run.join(timeout=0.2)
        assert result == [1]
        err = capsys.readouterr().err
        assert "failed on its worker" in err and "no pretrained weights" in err, err
        assert "0 of 6 done" in err and not out.exists()
        queue = Queue(QUEUE_NAME, connection=client)
        assert queue.count == 0 and queue.failed_job_registry.count == 0
    finally:
        release(client)


def test_a_broken_image_fails_alone(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 and the reason; the other images are pre-labelled, a rerun retries the broken one."""
    folder = tmp_path / "images"
    folder.mkdir()
    good = dataset / "widget" / "test" / "good" / "000.png"
    (folder / "a.png").write_bytes(good.read_bytes())
    (folder / "b.png").write_bytes(b"not a png")
    out = tmp_path / "tasks.json"
    assert prelabel(tmp_path, "--folder", str(folder), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "1 image(s) failed" in err and "b.png" in err
    tasks = json.loads(out.read_text())
    assert [Path(t["data"]["image"]).name for t in tasks] == ["a.png", "b.png"]
    assert len(tasks[0]["predictions"]) == 1 and "predictions" not in tasks[1]
    assert "category" not in tasks[0]["data"]

    (folder / "b.png").write_bytes(good.read_bytes())
    assert prelabel(tmp_path, "--folder", str(folder), "--out", str(out)) == 0
    assert all(len(t["predictions"]) == 1 for t in json.loads(out.read_text()))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one source"),
        (["--folder", "{tmp}", "--data", "mvtec:{tmp}"], "exactly one source"),
        (["--folder", "{tmp}/nowhere"], "does not exist"),
        (["--folder", "{tmp}/empty"], "no images found"),
        (["--data", "kitti:{tmp}"], "unknown dataset spec"),
        (["--data", "mvtec:{tmp}/nowhere"], "does not exist"),
        (["--folder", "{data}", "--config", "{{tau"], "--config is not valid JSON"),
        (["--folder", "{data}", "--config", '{{"taux": 1}}'], "unknown config field 'taux'"),
        (["--folder", "{data}", "--head", "{tmp}/head.safetensors"], "head file not found"),
        (["--folder", "{data}", "--label-config", "{tmp}/text.xml"], "no <Image> tag"),
        (["--folder", "{data}", "--defect-label", "Crack"], "not a label of"),
        (["--project", "3", "--label-studio-url", ""], "needs --label-studio-url"),
        (["--folder", "{data}", "--push"], "needs --project"),
        (["--project", "3", "--url-prefix", "/x/"], "--url-prefix is for"),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str],
    args: list[str], message: str,
) -> None:  # fmt: skip
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.xml").write_text('<View><Text name="t" value="$t"/></View>')
    values = {"tmp": tmp_path, "data": dataset / "widget" / "test" / "good"}
    argv = [arg.format(**values) for arg in args]
    out = [] if "--push" in argv else ["--out", str(tmp_path / "t.json")]
    assert prelabel(tmp_path, *argv, *out, "--api-key", "") == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m backend.prelabel: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's own errors exit 2 too; --help names every source and the resume file."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--folder", "x", "--workers", "many"])
    assert exit_info.value.code == 2
    assert "--workers: invalid int value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--folder", "mvtec:PATH", "--project", "--push", "--url-prefix",
                   "progress.jsonl", "--workers", "--worker"):  # fmt: skip
        assert needle in text, needle


def test_the_next_chunk_loads_while_this_one_is_predicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_ahead: chunks come back in order, each fully loaded; when the first is handed over
    the second is already loading (or loaded), and never a third; a broken file fails alone."""
    from concurrent.futures import ThreadPoolExecutor

    import backend.prelabel_core as core
    from backend.prelabel_core import load_ahead
    from labelstudio.fetch import ImageFetcher
    from labelstudio.predictions import load_task
    from labelstudio.settings import FetchSettings

    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(path)
        paths.append(path)
    paths[4].write_bytes(b"not a png")
    chunks = [[{"key": p.name, "path": str(p)} for p in paths[i : i + 2]] for i in (0, 2, 4)]
    settings = FetchSettings.from_env()
    loads: list[int] = []
    monkeypatch.setattr(core, "load_task", lambda task: (loads.append(1), load_task(task)))
    with ImageFetcher(settings, None) as fetcher, ThreadPoolExecutor(1) as pool:
        stream = load_ahead(iter(chunks), fetcher, settings, pool)
        items, tasks = next(stream)
        assert [i["key"] for i in items] == ["0.png", "1.png"]
        assert [int(t.image[0, 0, 0]) for t in tasks] == [0, 1]  # type: ignore[index]
        pool.submit(lambda: None).result()  # the one loader thread has run what was queued
        assert len(loads) == 4  # the second chunk loaded ahead, the third not yet
        ahead = list(stream)
    keys = [[i["key"] for i in items] for items, _ in ahead]
    assert keys == [["2.png", "3.png"], ["4.png", "5.png"]]
    (_, second), (_, third) = ahead
    assert [int(t.image[0, 0, 0]) for t in second] == [2, 3]  # type: ignore[index]
    assert third[0].image is None and third[0].error and third[1].image is not None
