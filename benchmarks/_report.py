"""What every benchmark script does around its ``run(args)``: the same setup and report output.

Imported by the scripts as a sibling module (``python benchmarks/X.py`` puts this folder on
``sys.path``); it puts the repository root there too, so the scripts can import ``clipsam``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(
    run: Callable[[argparse.Namespace], str], args: argparse.Namespace, echo: bool = True
) -> int:
    """Run with random weights only, print the report (unless ``run`` printed it as it went)
    and write it to ``args.out`` when given."""
    # Never download, and never pick up a user's head, which may be for another backbone.
    os.environ.setdefault("CLIPSAM_OFFLINE", "1")
    os.environ.pop("CLIPSAM_HEAD", None)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from clipsam.logging_setup import configure_logging, log_level

    configure_logging(log_level(default="WARNING"))  # the report is the output; LOG_FORMAT=json
    report = run(args)
    if echo:
        print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report if report.endswith("\n") else report + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0
