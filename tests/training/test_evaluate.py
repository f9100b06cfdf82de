"""``python -m training.evaluate``: its numbers are clipsam.metrics' numbers on the same maps, its
report folder is self-contained, and usage mistakes exit 2 before any model loads."""

from __future__ import annotations

import io
import json
import math
import os
from contextlib import redirect_stdout
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import clipsam
from clipsam.data import Sample, group_by_category, load_mask, make_synthetic_dataset, read_mvtec
from clipsam.heads import save_head
from clipsam.metrics import METRIC_NAMES, evaluate_per_class, format_table
from clipsam.weights import ENV_HEAD
from training import evaluate as ev
from training import report

CATEGORIES = ("gadget", "widget")
# tau 0.3: the random tiny head's maps peak near 0.45, so some regions (outlines) get predicted.
OVERRIDES = {"tau": 0.3, "weights": "random"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    return make_synthetic_dataset(root, categories=CATEGORIES, n_good=2, n_defect=3, seed=3)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> SimpleNamespace:
    """One CLI run with a head file (SAM off to stay fast), and a reference pipeline.

    The reference is built the same way (same preset, seed and overrides) and its seeded random
    UMCI head is the file the CLI loads, so both predict the same maps.
    """
    reference = clipsam.load_pipeline("tiny", head="umci", use_sam=False, **OVERRIDES)
    head_path = tmp_path_factory.mktemp("head") / "head.safetensors"
    save_head(reference.head, head_path)
    out = tmp_path_factory.mktemp("eval_out") / "run"
    argv = ["--data", f"mvtec:{data_root}", "--preset", "tiny", "--head", str(head_path),
            "--config", json.dumps(OVERRIDES), "--no-sam", "--out", str(out), "--quiet"]  # fmt: skip
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        code = ev.main(argv)
    return SimpleNamespace(code=code, stdout=stdout.getvalue(), out=out, reference=reference)


def library_metrics(pipeline, root: Path) -> dict[str, dict[str, float]]:
    """What clipsam.metrics says on the pipeline's full-size maps, scores and labels."""
    per_class = {}
    for name, samples in group_by_category(read_mvtec(root)).items():
        preds = pipeline.predict([s.image_path for s in samples], category=name)
        maps = [p.anomaly_map for p in preds]
        masks = [load_mask(s, m.shape) for s, m in zip(samples, maps, strict=True)]
        per_class[name] = (maps, masks, [p.score for p in preds], [s.label for s in samples])
    return evaluate_per_class(per_class)


def no_nan(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    return {
        c: {k: None if math.isnan(v) else v for k, v in row.items()} for c, row in results.items()
    }


class _ImgSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources += [v or "" for k, v in attrs if k == "src"]


# -- end to end -----------------------------------------------------------------------------------


def test_printed_and_json_metrics_are_the_librarys(evaluated, data_root: Path) -> None:
    assert evaluated.code == 0
    expected = library_metrics(evaluated.reference, data_root)
    assert list(expected) == [*CATEGORIES, "mean"]
    assert format_table(expected) in evaluated.stdout

    saved = json.loads((evaluated.out / "metrics.json").read_text())
    [dataset] = saved["datasets"]
    assert dataset["spec"] == f"mvtec:{data_root}"
    assert dataset["metrics"] == no_nan(expected)  # exact floats: JSON round-trips repr
    assert dataset["images"] == {"gadget": 5, "widget": 5}
    assert saved["head_version"] == evaluated.reference.head.version
    assert saved["config"]["mmr"] == {**saved["config"]["mmr"], "tau": 0.3, "use_sam": False}


def test_report_is_a_self_contained_folder(evaluated) -> None:
    page = (evaluated.out / "report.html").read_text(encoding="utf-8")
    parser = _ImgSources()
    parser.feed(page)
    assert len(parser.sources) == 2 * 5 * 4  # 2 classes × 5 images (< K) × 4 tiles
    for src in parser.sources:
        assert not src.startswith(("/", "http:", "https:", "file:")) and ".." not in src
        assert (evaluated.out / src).is_file(), src
    assert all(name in page for name in CATEGORIES)
    assert page.count("<svg") == 2 * len(CATEGORIES)  # ROC and PR per class
    assert page.count("<polyline") == 4 * len(CATEGORIES)  # pixel + image curve in each
    # Strict JSON: undefined metrics would be null, never NaN.
    json.loads((evaluated.out / "metrics.json").read_text(), parse_constant=pytest.fail)


def test_with_sam_and_the_default_head(data_root: Path, capsys) -> None:
    """SAM on, no --head (the training-free head), a subset: still the library's numbers."""
    argv = ["--data", f"mvtec:{data_root}", "--preset", "tiny", "--categories", "widget",
            "--max-images", "3", "--config", json.dumps(OVERRIDES), "--quiet"]  # fmt: skip
    assert ev.main(argv) == 0
    printed = capsys.readouterr().out

    reference = clipsam.load_pipeline("tiny", **OVERRIDES)
    samples = ev.spread(group_by_category(read_mvtec(data_root))["widget"], 3)
    preds = reference.predict([s.image_path for s in samples], category="widget")
    assert reference.info()["head"] == "none" and any(p.sam_used for p in preds)
    maps = [p.anomaly_map for p in preds]
    masks = [load_mask(s, m.shape) for s, m in zip(samples, maps, strict=True)]
    scores, labels = [p.score for p in preds], [s.label for s in samples]
    assert format_table(evaluate_per_class({"widget": (maps, masks, scores, labels)})) in printed


# -- usage errors: exit 2, nothing loaded ---------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a usage error must be reported before the model loads")

    monkeypatch.setattr(clipsam, "load_pipeline", refuse)  # main imports it late


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope:{root}", "unknown dataset spec"),
        ("mvtec", "unknown dataset spec"),
        ("mvtec:{root}/missing", "does not exist"),
        ("visa:{root}", "split file not found"),
        ("folder:{root}", "no labels"),
    ],
)
def test_bad_data_spec_exits_2(no_model, data_root: Path, capsys, spec: str, message: str) -> None:
    assert ev.main(["--data", spec.format(root=data_root), "--preset", "tiny"]) == 2
    assert message in capsys.readouterr().err


def test_missing_head_file_exits_2(no_model, data_root: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "head.safetensors"
    code = ev.main(["--data", f"mvtec:{data_root}", "--preset", "tiny", "--head", str(missing)])
    assert code == 2
    assert f"head file not found: {missing}" in capsys.readouterr().err


def test_unreadable_head_file_exits_2(data_root: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "head.safetensors"
    broken.write_bytes(b"not a safetensors file")
    code = ev.main(["--data", f"mvtec:{data_root}", "--preset", "tiny", "--head", str(broken)])
    assert code == 2
    assert str(broken) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "{tau: 1"], "not valid JSON"),
        (["--config", "[1, 2]"], "must be a JSON object"),
        (["--config", '{"no_such_field": 1}'], "unknown config field 'no_such_field'"),
        (["--categories", "widget,teapot"], "unknown categories ['teapot']"),
        (["--max-images", "0"], "--max-images must be >= 1"),
    ],
)
def test_other_usage_errors_exit_2(no_model, data_root, capsys, extra, message) -> None:
    assert ev.main(["--data", f"mvtec:{data_root}", "--preset", "tiny", *extra]) == 2
    assert message in capsys.readouterr().err


def test_help_names_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(opt in text for opt in ("--data", "--head", "--config", "--out", "--max-images"))


def test_head_none_ignores_the_environment_head(monkeypatch, data_root: Path) -> None:
    """``--head none`` means the training-free head even where $CLIPSAM_HEAD names a file: the
    weight paths passed to ``load_pipeline`` carry no head, and the environment is left alone
    (issue 13: the environment is read at the edges, never edited to steer a load)."""
    monkeypatch.setenv(ENV_HEAD, "/elsewhere/head.safetensors")
    monkeypatch.setenv("CLIPSAM_CLIP_WEIGHTS", "/elsewhere/clip.safetensors")
    seen = {}

    class Loaded(Exception):
        pass

    def fake_load(preset, weight_paths, **overrides):
        seen.update(preset=preset, overrides=overrides, env=os.environ.get(ENV_HEAD),
                    head=weight_paths.head, clip=weight_paths.clip)  # fmt: skip
        raise Loaded

    monkeypatch.setattr(clipsam, "load_pipeline", fake_load)
    with pytest.raises(Loaded):
        ev.main(["--data", f"mvtec:{data_root}", "--preset", "tiny", "--head", "none"])
    assert seen == {
        "preset": "tiny",
        "overrides": {"head": "none", "head_path": None},
        "env": "/elsewhere/head.safetensors",  # untouched, even while loading
        "head": None,
        "clip": Path("/elsewhere/clip.safetensors"),  # the rest of the environment still counts
    }
    assert os.environ[ENV_HEAD] == "/elsewhere/head.safetensors"


def test_head_file_from_the_environment_by_default(monkeypatch, tmp_path: Path) -> None:
    """Without --head, $CLIPSAM_HEAD names the head (read into the weight paths, at the edge)."""
    monkeypatch.setenv(ENV_HEAD, str(tmp_path / "head.safetensors"))
    args = ev.build_parser().parse_args(["--data", "mvtec:/x"])
    assert ev.weight_paths(args).head == tmp_path / "head.safetensors"
    assert "head_path" not in ev.pipeline_overrides(args)


# -- pieces ---------------------------------------------------------------------------------------


def test_open_datasets_filters_and_spreads(data_root: Path) -> None:
    [dataset] = ev.open_datasets([f"mvtec:{data_root}"] * 2, categories="widget", max_images=3)
    assert list(dataset.classes) == ["widget"]
    labels = [s.label for s in dataset.classes["widget"]]
    assert len(labels) == 3 and 0 in labels and 1 in labels  # not just the first three defects


def test_spread_keeps_the_ends_evenly() -> None:
    samples = [Sample(Path(f"{i}.png"), None, "c", 0, "good") for i in range(10)]
    assert [s.image_path.stem for s in ev.spread(samples, 4)] == ["0", "3", "6", "9"]
    assert ev.spread(samples, 20) == samples


def test_class_mean_skips_undefined_metrics_like_the_library() -> None:
    rows = {"a": dict.fromkeys(METRIC_NAMES, 0.5), "b": dict.fromkeys(METRIC_NAMES, 0.25)}
    rows["b"]["image_auroc"] = float("nan")
    mean = ev.class_mean(rows)
    assert mean["pixel_auroc"] == 0.375 and mean["image_auroc"] == 0.5


def test_overlays_show_missed_defects_then_false_alarms() -> None:
    scores = [0.9, 0.1, 0.5, 0.8, 0.2]
    labels = [1, 1, 0, 0, 1]
    assert report.overlay_order(scores, labels, 4) == [1, 4, 0, 3]


def test_pixel_curves_of_a_perfect_map_reach_the_corner() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 2:5] = True
    (fpr, tpr), (recall, precision) = report.pixel_curves([mask.astype(np.float32)], [mask])
    assert np.any((fpr == 0) & (tpr == 1))
    assert np.any((recall == 1) & (precision == 1))
    assert report.pixel_curves([np.zeros((4, 4), np.float32)], [np.zeros((4, 4), bool)]) is None
