"""Run several benchmark scripts in one fresh interpreter, one after another.

Each script is what ``python benchmarks/X.py ARGS`` runs (``runpy`` with ``__main__``), in its own
working directory, with torch's thread count restored between scripts. One interpreter pays the
imports (torch, open_clip, scikit-learn: ≈ 10 s) once instead of once per script.

Usage: python tests/benchmark_runner.py PLAN.json RESULTS.json, where PLAN is a list of
``{"name", "script", "args", "cwd"}`` and RESULTS maps each name to ``{"rc", "stdout", "error"}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_one(script: Path, args: list[str], cwd: Path) -> tuple[int, str, str]:
    """(exit status, stdout, the traceback or stderr's tail) of one script run as ``__main__``."""
    import torch

    threads, here, argv = torch.get_num_threads(), Path.cwd(), sys.argv
    sys.argv = [str(script), *args]
    stdout, stderr = io.StringIO(), io.StringIO()
    os.chdir(cwd)
    code, error = 0, ""
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        code, error = 1, traceback.format_exc()[-3000:]
    finally:
        os.chdir(here)
        sys.argv = argv
        torch.set_num_threads(threads)
    return code, stdout.getvalue(), stderr.getvalue()[-3000:] + error


def main() -> int:
    plan_path, results_path = map(Path, sys.argv[1:3])
    sys.path.insert(0, str(BENCHMARKS))
    results = {}
    for item in json.loads(plan_path.read_text(encoding="utf-8")):
        rc, stdout, error = run_one(BENCHMARKS / item["script"], item["args"], Path(item["cwd"]))
        results[item["name"]] = {"rc": rc, "stdout": stdout, "error": error}
        results_path.write_text(json.dumps(results), encoding="utf-8")  # partial on a crash
    return 0


if __name__ == "__main__":
    sys.exit(main())
