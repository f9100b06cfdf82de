"""Inline SVG line plots of the curves: the project does not depend on matplotlib, and a
polyline per curve is all a report needs."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from training.report.curves import image_curves, pixel_curves

_PIXEL_COLOR = "#1f77b4"
_IMAGE_COLOR = "#d62728"


@dataclass
class Series:
    label: str
    xy: tuple[np.ndarray, np.ndarray] | None  # None: undefined, listed in the legend only
    color: str


def svg_plot(title: str, xlabel: str, ylabel: str, series: Sequence[Series], diagonal: bool) -> str:
    """A small unit-square line plot as an inline ``<svg>`` (axes, grid, legend below)."""
    width, height = 300, 306
    top, plot = 26, 200  # plot area: plot×plot pixels, 46 px left for the y axis
    x0, y0 = 46, top + plot

    def px(x: float, y: float) -> str:
        return f"{x0 + x * plot:.1f},{y0 - y * plot:.1f}"

    parts = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{x0 + plot / 2}" y="16" class="t">{html.escape(title)}</text>',
    ]
    for i in range(6):
        v = i / 5
        parts.append(f'<line x1="{x0}" y1="{y0 - v * plot:.1f}" x2="{x0 + plot}" '
                     f'y2="{y0 - v * plot:.1f}" class="g"/>')  # fmt: skip
        parts.append(f'<line x1="{x0 + v * plot:.1f}" y1="{top}" x2="{x0 + v * plot:.1f}" '
                     f'y2="{y0}" class="g"/>')  # fmt: skip
        parts.append(f'<text x="{x0 - 5}" y="{y0 - v * plot + 4:.1f}" class="yt">{v:.1f}</text>')
        parts.append(f'<text x="{x0 + v * plot:.1f}" y="{y0 + 14}" class="xt">{v:.1f}</text>')
    parts.append(f'<rect x="{x0}" y="{top}" width="{plot}" height="{plot}" class="frame"/>')
    if diagonal:
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + plot}" y2="{top}" class="d"/>')
    for s in series:
        if s.xy is None:
            continue
        xs, ys = _thin(*s.xy)
        points = " ".join(px(float(x), float(y)) for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{s.color}" '
                     'stroke-width="1.8" stroke-linejoin="round"/>')  # fmt: skip
    parts.append(f'<text x="{x0 + plot / 2}" y="{y0 + 30}" class="xl">{html.escape(xlabel)}</text>')
    parts.append(
        f'<text x="12" y="{top + plot / 2}" class="yl" '
        f'transform="rotate(-90 12 {top + plot / 2})">{html.escape(ylabel)}</text>'
    )
    for i, s in enumerate(series):
        y = y0 + 50 + 17 * i
        label = s.label if s.xy is not None else f"{s.label} (undefined)"
        parts.append(f'<line x1="{x0}" y1="{y - 4}" x2="{x0 + 22}" y2="{y - 4}" '
                     f'stroke="{s.color}" stroke-width="3"/>')  # fmt: skip
        parts.append(f'<text x="{x0 + 28}" y="{y}" class="lg">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _thin(xs: np.ndarray, ys: np.ndarray, limit: int = 800) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` points (ends kept): an SVG needs no more at 200 px."""
    if len(xs) <= limit:
        return xs, ys
    keep = np.unique(np.linspace(0, len(xs) - 1, limit).round().astype(int))
    return xs[keep], ys[keep]


def curve_plots(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    scores: Sequence[float],
    labels: Sequence[int],
    metrics: Mapping[str, float],
) -> tuple[str, str]:
    """ROC and PR plots, pixel and image level each, with the exact AUROC/AP in the legend."""
    pixel = pixel_curves(maps, masks)
    image = image_curves(scores, labels)
    roc = svg_plot(
        "ROC",
        "false positive rate",
        "true positive rate",
        [
            Series(f"pixel  AUROC {pct(metrics['pixel_auroc'])}", pixel and pixel[0],
                   _PIXEL_COLOR),
            Series(f"image  AUROC {pct(metrics['image_auroc'])}", image and image[0],
                   _IMAGE_COLOR),
        ],
        diagonal=True,
    )  # fmt: skip
    pr = svg_plot(
        "Precision-recall",
        "recall",
        "precision",
        [
            Series(f"pixel  AP {pct(metrics['pixel_ap'])}", pixel and pixel[1], _PIXEL_COLOR),
            Series(f"image  AP {pct(metrics['image_ap'])}", image and image[1], _IMAGE_COLOR),
        ],
        diagonal=False,
    )
    return roc, pr


def pct(value: float | None) -> str:
    """A metric ×100 with one decimal, ``n/a`` when undefined (tables and legends alike)."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100.0 * value:.1f}"
