"""Heads: UMCI shapes and knobs, save → load round trips, refusal of foreign or broken files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clipsam.config import HeadConfig
from clipsam.heads import (
    HeadLoadError,
    HeadMismatchError,
    UMCIHead,
    build_head,
    head_from_aprilgan,
    load_head,
    read_head_metadata,
    save_head,
)


def _features(batch=2, stages=4, grid=16, width=96, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "stages": torch.randn(batch, stages, grid * grid, width, generator=g),
        "vv": torch.randn(batch, grid * grid, dim, generator=g),
        "global": torch.randn(batch, dim, generator=g),
    }


TEXT = torch.nn.functional.normalize(torch.randn(2, 64, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("kind", ["umci", "linear", "none"])
def test_logit_shapes(kind):
    head = build_head(HeadConfig(head=kind), "bb", in_dim=96, dim=64, stages=4, grid=16)
    logits = head(_features(), TEXT)
    assert logits.shape == (2, 1 if kind == "none" else 4, 2, 16, 16)
    assert torch.isfinite(logits).all()


def test_umci_parameter_count_matches_the_spec_at_vit_l_size():
    per_stage = UMCIHead("bb", in_dim=1024, dim=768, stages=1, grid=37)
    assert 6.5e6 < sum(p.numel() for p in per_stage.parameters()) < 6.9e6
    shared = UMCIHead("bb", in_dim=1024, dim=768, stages=4, grid=37, share_attn=True)
    assert 12.4e6 < sum(p.numel() for p in shared.parameters()) < 12.8e6


@pytest.mark.parametrize("paths", ["strip", "scale", "both"])
def test_ablation_paths_change_the_output(paths):
    torch.manual_seed(0)
    head = UMCIHead("bb", 96, 64, 4, 16, paths=paths, scales=(1, 3))
    out = head(_features(), TEXT)
    assert out.shape == (2, 4, 2, 16, 16)
    with pytest.raises(ValueError, match="paths"):
        UMCIHead("bb", 96, 64, 4, 16, paths="diagonal")
    with pytest.raises(ValueError, match="odd"):
        UMCIHead("bb", 96, 64, 4, 16, scales=(2,))


def test_strip_path_gives_every_cell_row_and_column_context():
    """Changing one token must move the logits of its whole row and column (and only via UMCI)."""
    torch.manual_seed(0)
    head = UMCIHead("bb", 96, 64, 1, 16, paths="strip").eval()
    features = _features(batch=1, stages=1)
    base = head(features, TEXT)
    features["stages"][0, 0, 5 * 16 + 7] += 5.0
    moved = (head(features, TEXT) - base).abs()[0, 0, 1] > 1e-6
    assert moved[5].all() and moved[:, 7].all() and moved.sum() < 16 * 16


@pytest.mark.parametrize(
    "config",
    [HeadConfig(), HeadConfig(head="linear"), HeadConfig(share_attn=True), HeadConfig(head="none")],
)
def test_save_load_round_trip_is_identical(tmp_path, config):
    torch.manual_seed(3)
    head = build_head(config, "tiny-bb", in_dim=96, dim=64, stages=4, grid=16).eval()
    path = tmp_path / "head.safetensors"
    version = save_head(head, path, extra={"note": "x"})
    loaded = load_head(path, backbone_id="tiny-bb")
    assert loaded.version == version == head.version and loaded.kind == head.kind
    features = _features()
    torch.testing.assert_close(loaded(features, TEXT), head(features, TEXT), rtol=0, atol=0)
    meta = read_head_metadata(path)
    assert meta["backbone_id"] == "tiny-bb" and meta["extra"] == {"note": "x"}
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_versions_follow_content(tmp_path):
    torch.manual_seed(0)
    a = build_head(HeadConfig(), "bb", 96, 64, 4, 16)
    b = build_head(HeadConfig(), "bb", 96, 64, 4, 16)
    va, vb = save_head(a, tmp_path / "a.safetensors"), save_head(b, tmp_path / "b.safetensors")
    assert va != vb and va.startswith("umci-")
    assert save_head(a, tmp_path / "a2.safetensors") == va
    assert save_head(a, tmp_path / "named.safetensors", version="v7") == "v7"


def test_head_for_another_backbone_is_rejected(tmp_path):
    head = build_head(HeadConfig(), "clipsam-tiny/random-seed0", 96, 64, 4, 16)
    save_head(head, tmp_path / "h.safetensors")
    with pytest.raises(HeadMismatchError, match=r"clipsam-tiny/random-seed0.*ViT-L"):
        load_head(tmp_path / "h.safetensors", backbone_id="ViT-L-14-336/openai/518px")


def test_corrupted_and_foreign_files_are_rejected(tmp_path):
    head = build_head(HeadConfig(head="linear"), "bb", 96, 64, 4, 16)
    good = tmp_path / "good.safetensors"
    save_head(head, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file" * 10)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    tampered = tmp_path / "tampered.safetensors"
    meta = read_head_metadata(good)
    meta["options"]["dim"] = 32
    from safetensors.torch import load_file

    save_file(load_file(str(good)), str(tampered), metadata={"clipsam_head": json.dumps(meta)})
    for path, message in [
        (truncated, "corrupted"),
        (garbage, "corrupted"),
        (foreign, "not a clipsam head"),
        (tampered, "do not fit"),
        (tmp_path / "missing.safetensors", "not found"),
    ]:
        with pytest.raises(HeadLoadError, match=message):
            load_head(path)


def test_aprilgan_checkpoint_format_loads_without_unpickling_code(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {}
    for i in range(4):
        state[f"fc.{i}.weight"] = torch.randn(64, 96, generator=g)
        state[f"fc.{i}.bias"] = torch.randn(64, generator=g)
    path = tmp_path / "aprilgan.pth"
    torch.save({"trainable_linearlayer": state}, path)
    head = head_from_aprilgan(path, backbone_id="bb", grid=16)
    assert head.kind == "linear" and head.version.startswith("aprilgan-")
    np.testing.assert_array_equal(head.fc[2].weight.detach().numpy(), state["fc.2.weight"].numpy())
    assert head(_features(), TEXT).shape == (2, 4, 2, 16, 16)
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an APRIL-GAN"):
        head_from_aprilgan(bad, backbone_id="bb")


def test_pipeline_predicts_identically_after_head_file_round_trip(make_tiny, tmp_path, rng):
    pipeline = make_tiny()
    head = pipeline.new_head(seed=5)
    pipeline.set_head(head)
    images = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)]
    before = pipeline.predict(images, "pill")[0]
    path = tmp_path / "head.safetensors"
    save_head(pipeline.head, path)
    other = make_tiny(head_path=str(path))  # a fresh process would build this same pipeline
    after = other.predict(images, "pill")[0]
    np.testing.assert_array_equal(before.anomaly_map, after.anomaly_map)
    assert other.info()["head_version"] == pipeline.head.version


def test_umci_text_attention_is_multihead_attention_folded():
    """The folded form gives nn.MultiheadAttention's outputs and gradients (few keys)."""
    from torch import nn

    from clipsam.heads.umci import attend_text

    torch.manual_seed(0)
    attn = nn.MultiheadAttention(64, 8, batch_first=True)
    for parameter in attn.parameters():
        parameter.data.normal_(0, 0.3)
    query = torch.randn(3, 50, 64, requires_grad=True)
    keys = torch.randn(3, 2, 64)
    expected = attn(query, keys, keys, need_weights=False)[0]
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), query)
    got = attend_text(attn, query, keys)
    (got_grad,) = torch.autograd.grad(got.square().sum(), query)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert torch.allclose(got_grad, expected_grad, atol=1e-3, rtol=1e-4)


def test_cosine_logits_and_their_gradients_match_normalising_the_tokens_first():
    """``text_logits`` divides (tokens · T̂) by the token norms instead of normalising a copy of
    the tokens (cheaper to train); the logits and the gradients are those of F.normalize."""
    import torch.nn.functional as F

    from clipsam.heads.base import text_logits

    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 64, generator=g)
    tokens = torch.randn(3, 16, 64, generator=g) * 5
    tokens[0, 0] = 0  # a zero token: clamped at 1e-12 in both, logits 0
    ours = tokens.clone().requires_grad_(True)
    stock = tokens.clone().requires_grad_(True)
    got = text_logits(ours, text, 100.0, 4)
    expected = 100.0 * F.normalize(stock, dim=-1) @ F.normalize(text, dim=-1).T
    expected = expected.transpose(1, 2).reshape(3, 2, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn(got.shape, generator=g)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    assert ours.grad is not None and stock.grad is not None
    torch.testing.assert_close(ours.grad, stock.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("paths", ["both", "strip", "scale"])
def test_umci_stage_is_the_spec_written_out(paths):
    """A UMCI stage (split fusion weight, scores pooled instead of queries, one matmul for the
    mean over scales) computes method spec §2 as written: nn.MultiheadAttention on every pooled
    map, the branches concatenated, Linear(2C → C); outputs and parameter gradients alike."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    head = UMCIHead("bb", 48, 32, 1, 9, paths=paths, scales=(1, 3, 5), attn_heads=4)
    for parameter in head.parameters():
        parameter.data.normal_(0, 0.3)
    stage = head.stages[0]
    tokens, text = torch.randn(3, 81, 48), torch.randn(2, 32)

    def spec() -> torch.Tensor:
        x = stage.norm(stage.proj(tokens)).reshape(3, 9, 9, 32)
        keys = text.unsqueeze(0).expand(3, -1, -1)

        def mha(attn, query):  # type: ignore[no-untyped-def]
            return attn(query, keys, keys, need_weights=False)[0]

        branches = []
        if paths in ("both", "strip"):
            rows, cols = x.mean(dim=2), x.mean(dim=1)
            rows, cols = rows + mha(stage.strip_attn, rows), cols + mha(stage.strip_attn, cols)
            branches.append(x + rows[:, :, None] + cols[:, None, :])
        if paths in ("both", "scale"):
            outs = []
            for k in (1, 3, 5):
                pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), k, 1, k // 2, count_include_pad=False)
                seq = pooled.permute(0, 2, 3, 1).reshape(3, 81, 32)
                outs.append(seq + mha(stage.scale_attn, seq))
            branches.append(torch.stack(outs).mean(0).reshape(3, 9, 9, 32))
        return (x + stage.fuse(torch.cat(branches, dim=-1))).reshape(3, 81, 32)

    weights = torch.randn(3, 81, 32)
    results = []
    for run in (lambda: stage(tokens, text, 9), spec):
        head.zero_grad()
        out = run()
        (out * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (got, got_grads), (expected, expected_grads) = results
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name)
