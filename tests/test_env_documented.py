"""Every environment variable the code reads is in one of the README's tables (issue 13).

The reads are found in the syntax tree, not by a list kept here: ``os.environ.get("X")``,
``os.environ["X"]``, ``os.getenv("X")``, ``env.get("X")`` on a settings mapping, the settings
readers' ``text("X")``/``number("X", ...)``/``items("X")``/``env("X")``, and ``ENV_* = "X"``
constants. A new variable fails this test until the README documents it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("clipsam", "labelstudio", "training", "correction_loop", "backend", "benchmarks",
           "scripts")  # fmt: skip
NAME = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
#: Local helpers of the settings classes and CLIs that read one variable by name.
READERS = {"getenv", "text", "number", "items", "env", "flag"}
MAPPINGS = {"env", "environ", "environment"}


def _read_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and node.args:
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            return None
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault"):
            owner = func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            return first.value if name in MAPPINGS else None
        if isinstance(func, ast.Attribute) and func.attr == "getenv":
            return first.value
        if isinstance(func, ast.Name) and func.id in READERS:
            return first.value
    if isinstance(node, ast.Subscript) and getattr(node.value, "attr", None) == "environ":
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
    if (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.startswith("ENV_")
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return node.value.value
    return None


def variables_read() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                name = _read_name(node)
                if name is not None and NAME.match(name):
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def documented() -> set[str]:
    """Names in backticks on the README's table rows."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    return {m for row in rows for cell in re.findall(r"`([^`]*)`", row)
            for m in re.findall(r"[A-Z][A-Z0-9_]{2,}", cell)}  # fmt: skip


def test_the_scan_finds_the_known_reads() -> None:
    """Guards the scan itself: these are read today in different ways."""
    found = variables_read()
    for name in ("CLIPSAM_HOME", "CLIPSAM_HEAD", "REDIS_URL", "MODEL_DIR", "LOG_FORMAT",
                 "LABEL_STUDIO_URL", "CLIPSAM_PREDICT_RATE", "CLIPSAM_RETRAIN_HEARTBEAT"):  # fmt: skip
        assert name in found, name


def test_every_variable_read_is_in_a_readme_table() -> None:
    missing = {name: sorted(where) for name, where in variables_read().items()
               if name not in documented()}  # fmt: skip
    assert missing == {}, f"document these in README.md's tables: {missing}"
