"""The training-free head's shipped thresholds: found by backbone id, tied to their weights."""

from __future__ import annotations

import hashlib
import json

import pytest

from clipsam.calibration import ZERO_SHOT_THRESHOLDS_FILE, Thresholds, zero_shot_thresholds
from clipsam.pipeline import fresh_head
from clipsam.weights import MICRO_CLIP_WEIGHTS

BACKBONE = "clipsam-micro/miniature/224px/quick_gelu/L2-3-5-6"


@pytest.fixture
def table(tmp_path):
    weights = tmp_path / "micro_clip.safetensors"
    weights.write_bytes(b"weights v1")
    entry = {"pixel": 0.31, "image": 0.62, "source": "test", "weights": weights.name,
             "sha256": hashlib.sha256(b"weights v1").hexdigest()}  # fmt: skip
    path = tmp_path / "zero_shot_thresholds.json"
    path.write_text(json.dumps({BACKBONE: entry}))
    return path


def test_thresholds_are_found_by_backbone_id(table):
    assert zero_shot_thresholds(BACKBONE, table) == Thresholds(0.31, 0.62, "test")
    assert (
        zero_shot_thresholds("clipsam-micro/random-seed0/224px/quick_gelu/L2-3-5-6", table) is None
    )
    assert zero_shot_thresholds(BACKBONE, table.parent / "absent.json") is None


def test_thresholds_of_other_weights_are_ignored(table, caplog):
    (table.parent / "micro_clip.safetensors").write_bytes(b"weights v2, retrained")
    assert zero_shot_thresholds(BACKBONE, table) is None
    assert "calibrated on other weights" in caplog.text


def test_an_unreadable_table_is_ignored(table, caplog):
    table.write_text("{not json")
    assert zero_shot_thresholds(BACKBONE, table) is None
    assert "unreadable" in caplog.text


def test_random_weights_get_no_thresholds(tiny_pipeline):
    head = fresh_head(tiny_pipeline.config, tiny_pipeline.clip, 0)  # umci: never any
    assert head.thresholds is None
    assert tiny_pipeline.new_head(kind="none").thresholds is None  # random backbone: none shipped


@pytest.mark.skipif(
    not (MICRO_CLIP_WEIGHTS.is_file() and ZERO_SHOT_THRESHOLDS_FILE.is_file()),
    reason="the miniature world's weights are not shipped yet",
)
def test_the_shipped_training_free_head_is_calibrated_on_the_miniature_world():
    import clipsam

    pipeline = clipsam.load_pipeline("tiny", weights="pretrained", use_sam=False)
    thresholds = pipeline.head.thresholds
    assert pipeline.head.kind == "none" and thresholds is not None
    assert thresholds.pixel is not None and thresholds.image is not None
    assert "miniature world" in thresholds.source and "training categories" in thresholds.source
    assert pipeline.new_head(kind="none").thresholds == thresholds  # rollbacks get them too
