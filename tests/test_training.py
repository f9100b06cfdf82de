"""Training UMCI on cached features: losses, determinism, the held-out gain, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from clipsam import metrics
from clipsam.calibration import Thresholds
from clipsam.data import read_mvtec
from clipsam.heads import load_head
from training import train as train_cli
from training.datasets import iter_labeled
from training.losses import dice_loss, focal_loss
from training.trainer import (
    TrainConfig,
    calibrate_head,
    evaluate_head,
    prepare_samples,
    split_holdout,
    train_head,
)


def test_losses_reward_the_right_map():
    target = torch.zeros(2, 8, 8)
    target[:, 2:5, 2:5] = 1
    right = target * 0.95 + 0.02
    wrong = 1 - right
    assert focal_loss(right, target) < 0.01 < focal_loss(wrong, target)
    assert dice_loss(right, target) < 0.1 < 0.9 < dice_loss(wrong, target)


@pytest.fixture(scope="module")
def prepared(tiny_pipeline, synthetic_root):
    samples = read_mvtec(synthetic_root, split="test")
    data = prepare_samples(tiny_pipeline, iter_labeled(samples), len(samples), progress=False)
    defect = [s for s in data if s.mask.any()]
    good = [s for s in data if not s.mask.any()]
    return defect, good


def test_held_out_split_is_stratified_and_deterministic(prepared):
    defect, good = prepared
    data = defect + good
    train, held = split_holdout(data, 0.2, seed=0)
    again, _ = split_holdout(data, 0.2, seed=0)
    assert len(held) == 12 + 2 and len(train) == len(data) - 14
    assert sum(bool(s.mask.any()) for s in held) == 12
    assert [id(s) for s in train] == [id(s) for s in again]


def test_training_is_deterministic_for_a_seed(tiny_pipeline, prepared):
    defect, good = prepared
    config = TrainConfig(epochs=1, progress=False, device="cpu")
    first = train_head(tiny_pipeline, defect[:8] + good[:2], config=config)
    second = train_head(tiny_pipeline, defect[:8] + good[:2], config=config)
    for a, b in zip(
        first.head.state_dict().values(), second.head.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert first.losses == second.losses


def test_mixed_precision_training_keeps_fp32_weights_and_learns(tiny_pipeline, prepared):
    """bf16 autocast for the forward pass (the default where the pipeline serves in bf16)."""
    defect, good = prepared
    data = defect[:16] + good[:2]
    fp32 = train_head(
        tiny_pipeline,
        data,
        config=TrainConfig(epochs=3, progress=False, device="cpu", precision="fp32"),
    )
    bf16 = train_head(
        tiny_pipeline,
        data,
        config=TrainConfig(epochs=3, progress=False, device="cpu", precision="bf16"),
    )
    assert all(p.dtype == torch.float32 for p in bf16.head.parameters())
    assert bf16.losses[-1] < bf16.losses[0]
    # Same seed and data: the two runs differ only by bf16 rounding in the forward pass.
    assert abs(bf16.losses[-1] - fp32.losses[-1]) < 0.1 * fp32.losses[-1]
    assert any(
        not torch.equal(a, b)
        for a, b in zip(fp32.head.parameters(), bf16.head.parameters(), strict=True)
    )  # autocast did run


@pytest.mark.slow
def test_a_trained_head_carries_thresholds_chosen_on_its_held_out_data(tiny_pipeline, prepared):
    defect, good = prepared
    train, held_out = defect[:6] + good[:2], defect[6:12] + good[2:5]
    init = tiny_pipeline.new_head(seed=0)
    init.thresholds = Thresholds(pixel=0.9, image=0.9, source="stale")
    config = TrainConfig(epochs=1, progress=False, device="cpu")
    result = train_head(tiny_pipeline, train, held_out, config, init_head=init)
    thresholds = result.head.thresholds
    assert thresholds is not None and thresholds != init.thresholds
    assert thresholds == calibrate_head(tiny_pipeline, result.head, held_out)
    assert 0 < thresholds.pixel < 1 and 0 < thresholds.image < 1
    assert "9 held-out images (6 defective)" in thresholds.source
    # the pixel threshold is the F1-max cut of the raw held-out maps
    maps = torch.cat(
        [tiny_pipeline.coarse_maps([s.features], result.head,
                                   tiny_pipeline.text_features(s.category), calibrated=False)
         for s in held_out]
    ).numpy()  # fmt: skip
    masks = torch.stack([s.mask for s in held_out]).bool().numpy()
    assert metrics.pixel_f1_max(maps, masks) == pytest.approx(
        metrics.pixel_f1_max(maps > thresholds.pixel, masks), abs=1e-6
    )
    assert train_head(tiny_pipeline, train, config=config).head.thresholds is None  # no held-out


@pytest.mark.slow
def test_training_on_40_defect_images_raises_held_out_pixel_auroc(tiny_pipeline, prepared):
    defect, good = prepared
    train, held_out = defect[:40] + good[:5], defect[40:] + good[5:]
    untrained = tiny_pipeline.new_head(seed=0)
    before = evaluate_head(tiny_pipeline, untrained, held_out)["mean"]["pixel_auroc"]
    config = TrainConfig(epochs=12, progress=False, device="cpu")
    result = train_head(tiny_pipeline, train, held_out, config, init_head=untrained)
    after = result.metrics["pixel_auroc"]
    assert result.losses[-1] < result.losses[0]
    print(f"held-out pixel AUROC {before:.3f} -> {after:.3f}")
    assert after >= 0.75 and after - before >= 0.15, (before, after)
    assert set(result.metrics) == {
        "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "aupro_aprilgan",
        "image_auroc", "image_ap", "image_f1_max",
    }  # fmt: skip


def test_cli_trains_and_writes_a_loadable_head(tiny_pipeline, synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_cli.main(
        [
            "--data", f"mvtec:{synthetic_root}", "--preset", "tiny", "--out", str(out),
            "--epochs", "1", "--quiet", "--device", "cpu", "--set", "scales=1,3",
            "--weights", "random",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train_samples"] + summary["held_out_samples"] == 70
    assert set(summary["metrics"]) == {"widget", "mean"}
    head = load_head(out / "head.safetensors", tiny_pipeline.clip.backbone_id)
    assert head.version == summary["version"] and head.options["scales"] == [1, 3]
    assert head.thresholds is not None and head.thresholds.to_dict() == summary["thresholds"]
    assert "| widget |" in capsys.readouterr().out


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--data" in text and "mvtec:PATH" in text and "--init-head" in text


def _moved(samples, by: int):
    """The same images with masks moved ``by`` pixels: a held-out set the head cannot fit."""
    from training.trainer import TrainingSample

    return [TrainingSample(s.features, torch.roll(s.mask, (by, by), dims=(0, 1)), s.category)
            for s in samples]  # fmt: skip


def test_early_stopping_keeps_the_best_epoch_and_a_warm_start_never_ends_worse(
    tiny_pipeline, prepared
):
    defect, good = prepared
    train = defect[:24] + good[:4]
    warm = train_head(tiny_pipeline, train, config=TrainConfig(epochs=6, progress=False)).head
    config = TrainConfig(epochs=20, patience=2, progress=False, device="cpu", stop_on="loss")

    # Held-out masks the training cannot reach: the starting weights stay the best.
    held = _moved(defect[40:52], 40)
    result = train_head(tiny_pipeline, train, held, config, init_head=warm)
    losses = result.held_out_losses
    assert result.best_epoch == int(torch.tensor(losses).argmin())
    assert len(result.losses) == result.best_epoch + 2 < 20  # stopped two epochs after the best
    kept = {k: v for k, v in result.head.state_dict().items()}
    if result.best_epoch == 0:
        for name, value in warm.state_dict().items():
            assert torch.equal(kept[name], value), name  # exactly the warm start
    print("held-out losses", [round(x, 4) for x in losses], "best", result.best_epoch)

    # A real held-out set: the kept head is the epoch with the lowest held-out loss.
    real = train_head(tiny_pipeline, train, defect[40:52] + good[5:8], config, init_head=warm)
    assert real.best_epoch == int(torch.tensor(real.held_out_losses).argmin())
    assert len(real.held_out_losses) == len(real.losses) + 1  # epoch 0: the start

    # Without patience every epoch runs and nothing is recorded.
    full = train_head(tiny_pipeline, train, held, TrainConfig(epochs=3, progress=False), warm)
    assert len(full.losses) == 3 and full.best_epoch is None and full.held_out_losses == []


def test_early_stopping_never_stops_a_fresh_head_before_its_floor(tiny_pipeline, prepared):
    """``min_epochs`` (a fresh head's MIN_STEPS in the retrain job): patience may end the run
    only after it, and the best epoch is still the one kept."""
    defect, good = prepared
    train, held = defect[:16] + good[:2], _moved(defect[40:46], 40)
    config = TrainConfig(
        epochs=8, patience=1, min_epochs=5, progress=False, device="cpu", stop_on="loss"
    )
    result = train_head(tiny_pipeline, train, held, config)
    losses = result.held_out_losses
    assert 5 <= len(result.losses) <= 8 and len(losses) == len(result.losses) + 1
    assert result.best_epoch == int(torch.tensor(losses).argmin())
    if result.best_epoch < 4:  # patience alone would have stopped it before the floor
        assert len(result.losses) == 5
    unfloored = train_head(tiny_pipeline, train, held, TrainConfig(
        epochs=8, patience=1, progress=False, device="cpu", stop_on="loss"))  # fmt: skip
    assert len(unfloored.losses) in (unfloored.best_epoch + 1, 8)  # one past the best, or the cap


def test_early_stopping_on_the_held_out_auroc_keeps_its_best_epoch(tiny_pipeline, prepared):
    """The default ``stop_on="auroc"``: the kept epoch is the first with the highest held-out
    pixel AUROC (the gate's metric); its maps and the start's come from the checks themselves,
    equal to a pass of their own; each new best is handed out, servable, as it happens; a warm
    start that no epoch beats is kept exactly."""
    from training.trainer import held_out_maps

    defect, good = prepared
    train = defect[:24] + good[:4]
    warm = train_head(tiny_pipeline, train, config=TrainConfig(epochs=6, progress=False)).head
    config = TrainConfig(epochs=12, patience=2, progress=False, device="cpu")
    held = defect[40:52] + good[5:8]
    improved: list[tuple[int, dict]] = []
    result = train_head(tiny_pipeline, train, held, config, init_head=warm,
                        on_improved=lambda b: improved.append((b.epoch, b.head().state_dict())))  # fmt: skip
    aurocs = result.held_out_aurocs
    assert len(aurocs) == len(result.losses) + 1 and result.held_out_losses == []
    assert result.best_epoch == aurocs.index(max(aurocs))  # a tie keeps the earlier epoch
    assert len(result.losses) in (result.best_epoch + 2, 12)
    records = [e for e in range(1, len(aurocs)) if aurocs[e] > max(aurocs[:e])]
    assert [e for e, _ in improved] == records
    if improved:  # the last one handed out is the head kept
        for name, value in result.head.state_dict().items():
            assert torch.equal(improved[-1][1][name], value), name
    for kept, head in ((result.held_out_maps, result.head), (result.start_maps, warm)):
        assert kept is not None
        fresh = held_out_maps(tiny_pipeline, head, held)
        for category, maps in fresh.maps.items():
            torch.testing.assert_close(kept.maps[category], maps)
    # Held-out masks out of reach: nothing beats the warm start, which is kept as it was.
    moved = train_head(tiny_pipeline, train, _moved(defect[40:52], 40), config, init_head=warm)
    if moved.best_epoch == 0:
        for name, value in warm.state_dict().items():
            assert torch.equal(moved.head.state_dict()[name], value), name
    assert moved.held_out_aurocs[moved.best_epoch] == max(moved.held_out_aurocs)
