"""Render docs/overview.png: an input image, its anomaly map, the predicted mask, the truth.

Reproducible without weights: the tiny random-weight backbones, a UMCI head trained for a few
seconds on synthetic defects (exactly what the test suite does), and a held-out image. With the
real ViT-L/SAM weights the maps are sharper; this shows the pipeline's outputs, not its quality.

    .venv/bin/python scripts/overview_figure.py [--out docs/overview.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
TILE = 224


def jet(values: np.ndarray) -> np.ndarray:
    """A small jet colormap (blue → red) for a [0, 1] map, as uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.concatenate(
        [np.clip(1.5 - np.abs(4 * v - 3), 0, 1), np.clip(1.5 - np.abs(4 * v - 2), 0, 1),
         np.clip(1.5 - np.abs(4 * v - 1), 0, 1)], axis=-1,
    )  # fmt: skip
    return (rgb * 255).astype(np.uint8)


def tile(array: np.ndarray, caption: str) -> Image.Image:
    image = Image.fromarray(array).resize((TILE, TILE), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (TILE, TILE + 22), "white")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((6, TILE + 5), caption, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "overview.png")
    args = parser.parse_args(argv)
    os.environ.setdefault("CLIPSAM_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import clipsam
    from clipsam.data import load_mask, make_synthetic_dataset, read_mvtec
    from clipsam.images import load_image
    from training.datasets import iter_labeled
    from training.trainer import TrainConfig, prepare_samples, train_head

    with tempfile.TemporaryDirectory() as folder:
        root = make_synthetic_dataset(Path(folder), categories=("widget",), n_good=8,
                                      n_defect=40, seed=0)  # fmt: skip
        samples = read_mvtec(root, split="test")
        pipeline = clipsam.load_pipeline(
            "tiny", weights="random", head="umci", use_sam=False, tau=0.5
        )
        train = [s for s in samples if s.image_path.stem != "000"][:40]
        data = prepare_samples(pipeline, iter_labeled(train), len(train), progress=False)
        result = train_head(pipeline, data, config=TrainConfig(epochs=12, progress=False))
        pipeline.set_head(result.head)
        shown = next(s for s in samples if s.label == 1 and s not in train)
        image = load_image(shown.image_path)
        truth = load_mask(shown, image.shape[:2])
        prediction = pipeline.predict([image], "widget")[0]
    overlay = image.copy()
    overlay[prediction.mask] = (0.5 * overlay[prediction.mask] + [127, 0, 0]).astype(np.uint8)
    panels = [
        tile(image, "input (held out)"),
        tile(jet(prediction.anomaly_map), f"anomaly map, score {prediction.score:.2f}"),
        tile(overlay, f"predicted mask, {len(prediction.regions)} region(s)"),
        tile(np.repeat(truth[..., None] * 255, 3, axis=-1).astype(np.uint8), "ground truth"),
    ]
    figure = Image.new("RGB", (len(panels) * (TILE + 8) - 8, TILE + 22), "white")
    for index, panel in enumerate(panels):
        figure.paste(panel, (index * (TILE + 8), 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
