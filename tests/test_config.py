"""Presets and overrides by field name."""

from __future__ import annotations

import pytest

from clipsam.config import MMRConfig, resolve_config


def test_presets_differ_where_they_should():
    paper, fast, tiny = (resolve_config(p) for p in ("paper", "fast", "tiny"))
    assert paper.clip == fast.clip and paper.clip.image_size == 518
    assert paper.clip.layers == (6, 12, 18, 24) and paper.clip.clip_pretrained == "openai"
    assert (paper.sam.sam_model, fast.sam.sam_model, tiny.sam.sam_model) == (
        "vit_h",
        "vit_b",
        "tiny",
    )
    assert tiny.weights == paper.weights == "pretrained"  # tiny: the shipped micro models


def test_overrides_find_their_section():
    config = resolve_config("fast", tau=0.3, head="linear", weights="random", scales=[1, 3])
    assert config.mmr.tau == 0.3 and config.head.head == "linear"
    assert config.head.scales == (1, 3) and config.weights == "random"
    assert config.sam.sam_model == "vit_b"
    whole = resolve_config("paper", mmr=MMRConfig(top_k=2))
    assert whole.mmr.top_k == 2


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid fields:.*tau"):
        resolve_config("paper", tua=0.3)
    with pytest.raises(ValueError, match="available presets: paper, fast, tiny"):
        resolve_config("huge")


def test_overrides_from_json_names_its_source_in_errors():
    from clipsam.config import overrides_from_json

    assert overrides_from_json('{"tau": 0.4}', "CLIPSAM_CONFIG") == {"tau": 0.4}
    with pytest.raises(ValueError, match="CLIPSAM_CONFIG is not valid JSON"):
        overrides_from_json("{tau: 0.4}", "CLIPSAM_CONFIG")
    with pytest.raises(ValueError, match=r"--config must be a JSON object .* got list"):
        overrides_from_json("[1, 2]", "--config")
