"""The layers point one way: clipsam ← labelstudio ← training ← correction_loop ← backend.

Every module of the five packages is parsed (no import runs) and each of its imports, wherever it
sits (top level, inside a function, under ``TYPE_CHECKING``), must name its own layer or one
below. The one exception is a command-line shim left where a module moved out of ``training``
(``python -m training``, ``training.worker``, ``training.import_export``): it may import ``main``
from the module that replaced it and must do nothing else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("clipsam", "labelstudio", "training", "correction_loop", "backend")
#: Old command-line paths that only call the new ``main``: file → the module it calls.
SHIMS = {
    "training/__main__.py": "correction_loop.registry_cli",
    "training/worker.py": "correction_loop.worker",
    "training/import_export.py": "correction_loop.import_export",
}


def _modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, module))
    return found


def upward_imports(path: Path, root: Path = ROOT) -> list[str]:
    """The imports of ``path`` that reach a layer above its own, as ``file:line module``."""
    own = LAYERS.index(path.relative_to(root).parts[0])
    bad = []
    for line, module in imported_modules(path, root):
        top = module.split(".")[0]
        if top in LAYERS and LAYERS.index(top) > own:
            bad.append(f"{path.relative_to(root).as_posix()}:{line} imports {module}")
    return bad


def test_every_layer_imports_only_itself_and_the_layers_below() -> None:
    modules = _modules()
    assert len(modules) > 50  # the packages were found
    bad = [
        problem
        for path in modules
        if path.relative_to(ROOT).as_posix() not in SHIMS
        for problem in upward_imports(path)
    ]
    assert not bad, "upward imports (layers: " + " < ".join(LAYERS) + "):\n" + "\n".join(bad)


@pytest.mark.parametrize(("shim", "target"), sorted(SHIMS.items()))
def test_a_moved_command_line_leaves_only_a_shim_calling_its_new_main(
    shim: str, target: str
) -> None:
    tree = ast.parse((ROOT / shim).read_text(encoding="utf-8"))
    body = [
        n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
    ]
    imports = [n for n in body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [
        (n.module, [a.name for a in n.names]) for n in imports if isinstance(n, ast.ImportFrom)
    ] == [(target, ["main"])]
    assert len(imports) == 1
    rest = [n for n in body if n not in imports]
    assert len(rest) == 1 and isinstance(rest[0], ast.If)  # if __name__ == "__main__": main()
    assert "__main__" in ast.unparse(rest[0].test)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: an upward import in a lower layer is reported, a downward one is not."""
    probe = tmp_path / "labelstudio" / "probe.py"
    probe.parent.mkdir()
    probe.write_text(
        "from clipsam import images\n"
        "def f():\n"
        "    from correction_loop import keys\n"
        "    from . import fetch\n",
        encoding="utf-8",
    )
    assert upward_imports(probe, tmp_path) == ["labelstudio/probe.py:3 imports correction_loop"]
    assert (4, "labelstudio") in imported_modules(probe, tmp_path)
