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
