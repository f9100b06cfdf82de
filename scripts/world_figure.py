"""Render docs/miniature_world.png: every miniature-world category, a good image and defects.

One row per category (held-out ones marked), the good image first, then defective images with
each defect's mask outlined in red and its kind written underneath.

    .venv/bin/python scripts/world_figure.py [--out docs/miniature_world.png] [--tile 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipsam.data.world import (  # noqa: E402
    CATEGORIES,
    HELDOUT_CATEGORIES,
    WORLD_DEFECT_TYPES,
    render_sample,
)

RED = np.array([230, 20, 20], dtype=np.uint8)


def outlined(image: np.ndarray, mask: np.ndarray, tile: int) -> Image.Image:
    """``image`` resized to ``tile`` with ``mask``'s outline drawn in red on top."""
    small = Image.fromarray(image).resize((tile, tile), Image.Resampling.LANCZOS)
    if not mask.any():
        return small
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((tile, tile))) > 127
    edge = ndimage.binary_dilation(m, iterations=1) & ~m
    out = np.asarray(small).copy()
    out[edge] = RED
    return Image.fromarray(out)


def row_images(
    category: str, row: int, columns: int, size: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    cells = []
    good = render_sample(category, np.random.default_rng([row, 0]), (size, size))
    cells.append(("good", good.image, good.mask))
    for col in range(1, columns):
        kind = WORLD_DEFECT_TYPES[(row + col - 1) % len(WORLD_DEFECT_TYPES)]
        sample = render_sample(category, np.random.default_rng([row, col]), (size, size), (kind,))
        cells.append((kind.replace("_", " "), sample.image, sample.mask))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "miniature_world.png")
    parser.add_argument("--tile", type=int, default=100, help="tile side in the figure, px")
    parser.add_argument("--size", type=int, default=224, help="rendered image side, px")
    parser.add_argument("--columns", type=int, default=6, help="images per row (1 good)")
    parser.add_argument("--panels", type=int, default=2, help="side-by-side columns of rows")
    parser.add_argument("--colours", type=int, default=192, help="palette size (0: full RGB)")
    args = parser.parse_args()

    tile, label_w, caption_h, pad = args.tile, 112, 13, 3
    rows_per_panel = -(-len(CATEGORIES) // args.panels)
    row_h = tile + caption_h + pad
    panel_w = label_w + args.columns * (tile + pad)
    header = 22
    sheet = Image.new("RGB", (args.panels * panel_w + 8, header + rows_per_panel * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (6, 5),
        f"miniature world: {len(CATEGORIES)} categories ({len(HELDOUT_CATEGORIES)} held out, "
        "marked *); good image, then defects with their masks outlined in red",
        fill="black",
    )
    for index, category in enumerate(CATEGORIES):
        panel, row = divmod(index, rows_per_panel)
        x0, y0 = panel * panel_w + 4, header + row * row_h
        held = category in HELDOUT_CATEGORIES
        draw.text((x0, y0 + tile // 2 - 12), category, fill="black")
        draw.text(
            (x0, y0 + tile // 2 + 2),
            "* HELD OUT" if held else "train",
            fill=(200, 0, 0) if held else (90, 90, 90),
        )
        for col, (caption, image, mask) in enumerate(
            row_images(category, index, args.columns, args.size)
        ):
            x = x0 + label_w + col * (tile + pad)
            sheet.paste(outlined(image, mask, tile), (x, y0))
            draw.text((x + 2, y0 + tile), caption, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.colours:
        sheet = sheet.quantize(
            args.colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG
        )
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
