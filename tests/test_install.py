"""``pip install .`` gives a usable package: every console script answers ``--help`` from a fresh
venv, with the code imported from that venv and not from this checkout.

Installing torch and the rest into a fresh venv would take minutes and need the network, so the
test does what ``pip install .`` does in two honest halves: it builds the wheel from a copy of
the sources with the declared build backend (``pip wheel --no-build-isolation``, the backend
this venv has) and installs it with ``--no-deps`` into a fresh venv whose only other path is a
``.pth`` file naming this venv's site-packages, where the pinned dependencies already are. It
then checks that those dependencies satisfy what the wheel declares, so ``pip install .`` would
have nothing else to resolve.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
#: The issue's console scripts (issue 13): backend, prelabel, train, evaluate, worker, registry.
EXPECTED = {
    "clipsam-backend": "backend",
    "clipsam-prelabel": "backend.prelabel",
    "clipsam-train": "training.train",
    "clipsam-evaluate": "training.evaluate",
    "clipsam-worker": "training.worker",
    "clipsam-registry": "training",
}


def _run(
    args: list[str], cwd: Path, timeout: float = 300, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra_env)
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout installed; returns its folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: building in place would leave build/ and *.egg-info here
    source.mkdir()
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in patterns:
        for folder in REPO.glob(pattern.rstrip("*") + "*"):
            if (folder / "__init__.py").is_file() and not (source / folder.name).exists():
                shutil.copytree(
                    folder, source / folder.name, ignore=shutil.ignore_patterns("__pycache__")
                )
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(REPO / name, source / name)
    dist = root / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(dist), str(source)],
        cwd=root,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = dist.glob("clipsam_labeling-*.whl")

    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root
    ).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(purelib) / "_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    done = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", str(wheel)],
        cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def test_the_issue_s_console_scripts_are_declared() -> None:
    assert set(EXPECTED) <= set(SCRIPTS)
    for name, module in EXPECTED.items():
        assert SCRIPTS[name].split(":")[0] in (module, f"{module}.__main__"), name


def test_the_docker_image_installs_the_package() -> None:
    """The Dockerfile installs the package (no deps: requirements.txt's pins come first), and
    .dockerignore lets in every package folder pyproject.toml builds from."""
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert dockerfile.index("-r requirements.txt") < dockerfile.index("pip install --no-deps")
    allowed = {
        line[1:].strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    assert {"pyproject.toml", "README.md", "requirements.txt"} <= allowed
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in allowed, pattern
    for folder in REPO.iterdir():
        if (folder / "__init__.py").is_file() and folder.name not in ("tests", "benchmarks"):
            assert folder.name in allowed, f"{folder.name} is a package the image leaves out"


@pytest.mark.slow
def test_code_and_package_data_come_from_the_venv(installed: Path, tmp_path: Path) -> None:
    probe = """
import importlib.metadata as md, json
from packaging.requirements import Requirement
import backend, clipsam, training
from clipsam import calibration, weights
from clipsam.clip_backbone import ClipBackbone  # registers model_configs/ with open_clip
import open_clip
unmet = []
for line in md.requires("clipsam-labeling") or []:
    req = Requirement(line)
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        have = None
    if have is None or not req.specifier.contains(have, prereleases=True):
        unmet.append(f"{req} (have {have})")
print(json.dumps({
    "files": [m.__file__ for m in (backend, clipsam, training)],
    "data": [str(weights.MICRO_CLIP_WEIGHTS), str(calibration.ZERO_SHOT_THRESHOLDS_FILE)],
    "data_ok": weights.MICRO_CLIP_WEIGHTS.is_file()
    and calibration.ZERO_SHOT_THRESHOLDS_FILE.is_file(),
    "micro_config": "clipsam-micro" in open_clip.list_models(),
    "unmet": unmet,
}))
"""
    done = _run([str(installed / "bin" / "python"), "-c", probe], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for path in seen["files"] + seen["data"]:
        assert Path(path).resolve().is_relative_to(installed.resolve()), path
    assert seen["data_ok"] and seen["micro_config"]
    assert seen["unmet"] == []  # requirements.txt's pins are what the wheel declares


@pytest.mark.slow
def test_console_scripts_and_python_dash_m_answer_help(installed: Path, tmp_path: Path) -> None:
    """Each console script, and each ``python -m`` form, from the venv, without importing
    torch (Python's import log, ``PYTHONPROFILEIMPORTTIME``, names every module imported):
    ``--help`` answers in a second or a few, not after the 10-20 s torch and its friends take."""
    bin_dir = installed / "bin"
    commands = [[str(bin_dir / script), "--help"] for script in sorted(EXPECTED)]
    commands += [
        [str(bin_dir / "python"), "-m", module, "--help"]
        for module in sorted(set(EXPECTED.values()))
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda args: _run(args, tmp_path, PYTHONPROFILEIMPORTTIME="1"), commands)
        )
    for args, done in zip(commands, results, strict=True):
        assert done.returncode == 0, (args, done.stdout + done.stderr)
        assert "usage:" in done.stdout, args
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
        assert "torch" not in imported, args
