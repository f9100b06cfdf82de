"""The backend reads the environment once, in ``Settings.from_env``, and passes it down."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend import model as backend_model
from backend.model import ModelService
from backend.settings import Settings
from clipsam.weights import WeightPaths


def test_weight_variables_are_read_into_the_settings(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "CLIPSAM_HOME": str(tmp_path / "home"),
        "CLIPSAM_CLIP_WEIGHTS": str(tmp_path / "clip.safetensors"),
        "CLIPSAM_SAM_CHECKPOINT": str(tmp_path / "sam.pth"),
        "CLIPSAM_HEAD": str(tmp_path / "head.safetensors"),
        "CLIPSAM_OFFLINE": "1",
    })  # fmt: skip
    assert settings.weight_paths == WeightPaths(
        home=tmp_path / "home",
        clip=tmp_path / "clip.safetensors",
        sam=tmp_path / "sam.pth",
        head=tmp_path / "head.safetensors",
        offline=True,
    )
    assert settings.head_path == tmp_path / "head.safetensors"


def test_the_model_loads_with_the_settings_weight_paths(monkeypatch, tmp_path: Path) -> None:
    """What ``load_pipeline`` gets comes from the settings, not from ``os.environ`` (which
    names files that do not exist here)."""
    monkeypatch.setenv("CLIPSAM_CLIP_WEIGHTS", "/nowhere/clip.pt")
    settings = Settings.from_env({"CLIPSAM_PRESET": "tiny", "MODEL_DIR": str(tmp_path)})
    seen = {}

    class Loaded(Exception):
        pass

    def fake_load(preset, *, weight_paths, **overrides):
        seen.update(preset=preset, weight_paths=weight_paths)
        raise Loaded

    monkeypatch.setattr(backend_model, "load_pipeline", fake_load)
    with pytest.raises(Loaded):
        ModelService(settings)._load()
    assert seen["preset"] == "tiny"
    assert seen["weight_paths"] is settings.weight_paths
    assert settings.weight_paths is not None and settings.weight_paths.clip is None
