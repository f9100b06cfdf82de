"""The benchmark scripts run end to end on the tiny preset (their numbers are never checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
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


MINIATURE_ARGS = [
    "--weights", "random", "--threads", "1", "--train-per-category", "1",
    "--heldout-per-category", "3", "--epochs", "1", "--rows", "2",
]  # fmt: skip


@dataclass(frozen=True)
class Ran:
    rc: int
    stdout: str
    error: str
    out: Path  # the report the script was asked to write


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every script above, and the miniature ablation, run by ``tests/benchmark_runner.py`` in
    one fresh interpreter (each in its own folder): the imports are paid once, not per script."""
    root = tmp_path_factory.mktemp("benchmarks")
    plan, outs = [], {}
    for script, (args, _) in sorted(SCRIPTS.items()):
        cwd = root / script.removesuffix(".py")
        cwd.mkdir()
        outs[script] = cwd / "report.md"
        plan.append({"name": script, "script": script, "cwd": str(cwd),
                     "args": [*args, "--out", str(outs[script])]})  # fmt: skip
    cwd = root / "miniature"
    (cwd / "pictures").mkdir(parents=True)
    outs["miniature.py"] = cwd / "ablation.md"
    plan.append({"name": "miniature.py", "script": "miniature.py", "cwd": str(cwd),
                 "args": [*MINIATURE_ARGS, "--out", str(outs["miniature.py"]),
                          "--grid", str(cwd / "pictures" / "grid.png")]})  # fmt: skip
    (root / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    results = root / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "benchmark_runner.py"), str(root / "plan.json"),
         str(results)],
        capture_output=True, text=True, timeout=1200, cwd=root,
    )  # fmt: skip
    seen = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
    crashed = f"the runner crashed (rc {done.returncode}): {done.stderr[-3000:]}"
    return {
        name: Ran(seen[name]["rc"], seen[name]["stdout"], seen[name]["error"], out)
        if name in seen
        else Ran(-1, "", crashed, out)
        for name, out in outs.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_writes_its_report(script, ran):
    _, expected = SCRIPTS[script]
    result = ran[script]
    assert result.rc == 0, result.error
    report = result.out.read_text()
    assert report.startswith("# ") and expected in report, report


@pytest.mark.slow
def test_miniature_ablation_writes_its_tables_and_grid(ran):
    """benchmarks/miniature.py at a reduced size (random weights: the numbers mean nothing)."""
    result = ran["miniature.py"]
    assert result.rc == 0, result.error
    report = result.out.read_text()
    for row in ("| UMCI, strip path only |", "| L2: box prompts only |", "| HSF (AdaCLIP)"):
        assert row in report, report
    assert "](pictures/grid.png)" in report
    assert "| training-free head |" in result.stdout  # the tables go to stdout too
    grid = result.out.parent / "pictures" / "grid.png"
    assert 0 < grid.stat().st_size < 600 * 1024
