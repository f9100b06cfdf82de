"""The benchmark scripts run end to end on the tiny preset (their numbers are never checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPTS = {
    "predict.py": (["--arch", "tiny", "--batch", "0", "--components", "2"], "| ours cached"),
    "encoders.py": (["--arch", "tiny", "--repeats", "1"], "| SAM tiny |"),
    "decoder.py": (["--arch", "tiny", "--repeats", "1", "--components", "3"], "| ours, fp32 |"),
    "training.py": (["--arch", "tiny", "--images", "8", "--epochs", "1"], "s per epoch per 100"),
    "retrain.py": (
        ["--arch", "tiny", "--corrections", "10", "--size", "96x96", "--old-epochs", "2"],
        "CLIP image forwards during the timed retrain: 0**",  # features from the cache
    ),
    "interactive.py": (
        ["--arch", "tiny", "--size", "128x128", "--clicks", "2", "--baseline-clicks", "1"],
        "| ours, cached: 1 click |",
    ),
    "throughput.py": (
        ["--arch", "tiny", "--images", "4", "--size", "128", "--chunk-size", "2", "--workers", "1"],
        "| 1 rq worker(s), ",
    ),
    "mmr_rules.py": (
        ["--heldout-per-category", "2", "--train-per-category", "1"],
        "| no SAM, hysteresis: A > t connected to a component |",
    ),
    "fewshot.py": (["--categories", "carpet", "--per-category", "3", "--ks", "0,1"], "| 1 |"),
    "defect_types.py": (
        ["--categories", "tablet", "--test-per-type", "1", "--ks", "0", "1"],
        "| k = 1 per type |",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_writes_its_report(script, tmp_path):
    args, expected = SCRIPTS[script]
    out = tmp_path / "report.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    assert report.startswith("# ") and expected in report, report


@pytest.mark.slow
def test_miniature_ablation_writes_its_tables_and_grid(tmp_path):
    """benchmarks/miniature.py at a reduced size (random weights: the numbers mean nothing)."""
    out, grid = tmp_path / "ablation.md", tmp_path / "pictures" / "grid.png"
    args = ["--weights", "random", "--threads", "1", "--train-per-category", "1",
            "--heldout-per-category", "3", "--epochs", "1", "--rows", "2"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "miniature.py"), *args,
         "--out", str(out), "--grid", str(grid)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    for row in ("| UMCI, strip path only |", "| L2: box prompts only |", "| HSF (AdaCLIP)"):
        assert row in report, report
    assert "](pictures/grid.png)" in report
    assert "| training-free head |" in done.stdout  # the tables go to stdout too
    assert 0 < grid.stat().st_size < 600 * 1024
