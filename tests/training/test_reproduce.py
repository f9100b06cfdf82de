"""The published protocol CLI end to end on small synthetic MVTec-AD and VisA layouts."""

from __future__ import annotations

import json

import pytest

from clipsam.data import make_synthetic_dataset, read_visa
from training import reproduce
from training.layouts import synthetic_visa


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    mvtec = make_synthetic_dataset(
        root / "mvtec", categories=("widget",), n_good=2, n_defect=4, n_train_good=0, size=(96, 96)
    )
    visa = synthetic_visa(
        root / "visa", categories=("gadget",), n_good=2, n_defect=4, size=(96, 96)
    )
    return mvtec, visa


def test_visa_layout_reads_back(two_datasets):
    _, visa = two_datasets
    test = read_visa(visa, split="test")
    assert [s.label for s in test].count(1) == 4 and [s.label for s in test].count(0) == 2
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in test if s.label)
    assert {s.category for s in test} == {"gadget"}
    assert len(read_visa(visa, split="train")) == 2


@pytest.mark.slow
def test_reproduce_runs_both_directions_and_prints_the_published_numbers(
    two_datasets, tmp_path, capsys
):
    mvtec, visa = two_datasets
    out = tmp_path / "repro.json"
    code = reproduce.main(
        ["--mvtec", str(mvtec), "--visa", str(visa), "--preset", "tiny", "--weights", "random", "--epochs", "1",
         "--device", "cpu", "--quiet", "--out", str(out), "--heads-dir", str(tmp_path / "heads")]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    print(printed)
    assert (
        "zero-shot on VisA (6 images), trained on MVTec-AD test split (6 images, 1 epoch,"
        in printed
    )
    assert "zero-shot on MVTec-AD (6 images)" in printed
    assert "| ClipSAM (paper Tab. 1) | 95.6 | 33.1 | 26.7 | 87.5 | – |" in printed
    assert "| ClipSAM (paper Tab. 1) | 92.3 | 47.8 | 45.9 | 88.3 | – |" in printed
    assert printed.count("| **ours** |") == 2
    payload = json.loads(out.read_text())
    assert [(r["train"], r["test"]) for r in payload["runs"]] == [
        ("mvtec", "visa"),
        ("visa", "mvtec"),
    ]
    for run in payload["runs"]:
        assert set(run["per_class"]) == {"mean", "gadget" if run["test"] == "visa" else "widget"}
        assert 0.0 <= run["metrics"]["pixel_auroc"] <= 1.0
    assert payload["random_weights"] is True
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == [
        "mvtec-to-visa.safetensors", "visa-to-mvtec.safetensors",
    ]  # fmt: skip


def test_markdown_output_and_usage_errors(tmp_path, two_datasets, capsys, tiny_pipeline):
    mvtec, visa = two_datasets
    assert reproduce.main(["--mvtec", str(mvtec)]) == 2
    assert "give both --mvtec PATH and --visa PATH" in capsys.readouterr().err
    bad = ["--mvtec", str(mvtec), "--visa", str(visa), "--out", str(tmp_path / "x.txt")]
    assert reproduce.main(bad) == 2
    assert reproduce.main(["--mvtec", str(tmp_path / "nope"), "--visa", str(visa)]) == 2
    run = reproduce.Run("mvtec", "visa", 3, 10, 12, {"pixel_auroc": 0.9, "pixel_f1_max": 0.3,
                        "pixel_ap": 0.25, "aupro": 0.8, "aupro_aprilgan": 0.85})  # fmt: skip
    table = reproduce.format_table([run])
    assert "| **ours** | 90.0 | 30.0 | 25.0 | 80.0 | 85.0 |" in table
    assert "| AnomalyCLIP | 95.5 | – | – | 87.0 | – |" in table
    reproduce.write_results(tmp_path / "r.md", [run], table, tiny_pipeline)
    written = (tmp_path / "r.md").read_text()
    assert written.startswith("# Zero-shot reproduction") and table in written
    assert "random weights: True" in written


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--mvtec", "--visa", "--preset", "--epochs", "--out", "--max-images"):
        assert option in text


@pytest.mark.slow
def test_reproduce_on_the_miniature_world(tmp_path, capsys):
    """--miniature: the world's training categories in the MVTec-AD layout, its held-out ones
    in the VisA layout, trained on one and tested zero-shot on the other (random weights here:
    the plumbing, not the numbers)."""
    import torch

    from clipsam.data.world import HELDOUT_CATEGORIES, TRAIN_CATEGORIES

    world, out = tmp_path / "world", tmp_path / "mini.json"
    threads = torch.get_num_threads()
    try:
        code = reproduce.main(
            ["--miniature", "--weights", "random", "--max-images", "2", "--epochs", "1",
             "--threads", "1", "--device", "cpu", "--quiet", "--world-dir", str(world),
             "--out", str(out)]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    print(printed)
    assert (
        "zero-shot on the miniature world's held-out categories (VisA layout) (8 images), "
        "trained on the miniature world's training categories (MVTec-AD layout) test split "
        "(32 images, 1 epoch," in printed
    )
    assert "| ClipSAM (paper Tab. 1), on VisA | 95.6 | 33.1 | 26.7 | 87.5 | – |" in printed
    assert printed.count("| **ours** |") == 1
    payload = json.loads(out.read_text())
    assert payload["preset"] == "tiny"
    [run] = payload["runs"]
    assert (run["train"], run["test"]) == ("miniature-train", "miniature-heldout")
    assert set(run["per_class"]) == {"mean", *HELDOUT_CATEGORIES}
    assert 0.0 <= run["metrics"]["pixel_auroc"] <= 1.0
    assert sorted(p.name for p in (world / "train-mvtec").iterdir()) == sorted(TRAIN_CATEGORIES)
    assert {s.category for s in read_visa(world / "heldout-visa")} == set(HELDOUT_CATEGORIES)


def test_miniature_usage_errors(tmp_path, capsys):
    assert reproduce.main(["--miniature", "--mvtec", str(tmp_path)]) == 2
    assert "either --miniature or --mvtec and --visa" in capsys.readouterr().err
    assert reproduce.main(["--world-dir", str(tmp_path), "--mvtec", "a", "--visa", "b"]) == 2
    assert reproduce.main(["--miniature", "--threads", "0"]) == 2
