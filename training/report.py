"""The HTML report of ``python -m training.evaluate``: tables, ROC/PR curves and overlay grids.

The report is one ``report.html`` plus PNG tiles under ``images/`` referenced by relative paths,
so the folder can be zipped, copied or served as it is. Curves are inline SVG drawn here: the
project does not depend on matplotlib, and a polyline per curve is all a report needs.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_curve

from clipsam.data import Sample
from clipsam.images import load_image
from clipsam.metrics import METRIC_NAMES

#: Longest side of an overlay tile, in pixels: big enough to see a scratch, small on disk.
TILE_SIDE = 224
#: Thresholds of the pixel-level curves. The table's numbers are exact; curves are for the eye.
CURVE_BINS = 1000

_PIXEL_COLOR = "#1f77b4"
_IMAGE_COLOR = "#d62728"
_PRED_RGB = (255, 40, 40)
_GT_RGB = (40, 230, 40)
#: "jet" anchors (position, RGB 0-1); the same gradient is the HTML colour bar.
_JET = (
    (0.0, (0.0, 0.0, 0.5)),
    (0.125, (0.0, 0.0, 1.0)),
    (0.375, (0.0, 1.0, 1.0)),
    (0.625, (1.0, 1.0, 0.0)),
    (0.875, (1.0, 0.0, 0.0)),
    (1.0, (0.5, 0.0, 0.0)),
)
_MAP_ALPHA = 0.6


@dataclass
class OverlayRow:
    """One image of the grid: a caption and its four tiles (paths relative to the report)."""

    caption: str
    tiles: tuple[str, str, str, str]  # input, anomaly map, predicted outline, ground truth


@dataclass
class ClassReport:
    """Everything the report shows for one class; built while its maps are still in memory."""

    name: str
    metrics: dict[str, float]
    n_images: int
    n_defect: int
    roc_svg: str = ""
    pr_svg: str = ""
    overlays: list[OverlayRow] = field(default_factory=list)


@dataclass
class DatasetReport:
    spec: str
    classes: list[ClassReport]
    mean: dict[str, float]


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------


def pixel_curves(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], bins: int = CURVE_BINS
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """Pixel ROC ``(fpr, tpr)`` and PR ``(recall, precision)`` at ``bins`` thresholds.

    Histograms instead of scikit-learn's curves: those sort every pixel of the class (hundreds
    of millions on MVTec), which a plot does not need. None when one class of pixel is missing.
    """
    pos = np.zeros(bins, dtype=np.int64)
    neg = np.zeros(bins, dtype=np.int64)
    for amap, mask in zip(maps, masks, strict=True):
        idx = np.minimum((np.clip(amap, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
        pos += np.bincount(idx[mask], minlength=bins)
        neg += np.bincount(idx[~mask], minlength=bins)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    moves = (pos + neg)[::-1] > 0  # thresholds (high to low) where the curve moves at all
    tp = np.cumsum(pos[::-1])[moves]
    fp = np.cumsum(neg[::-1])[moves]
    roc = (np.concatenate(([0.0], fp / n_neg)), np.concatenate(([0.0], tp / n_pos)))
    called = tp + fp > 0
    precision = tp[called] / (tp + fp)[called]
    recall = tp[called] / n_pos
    pr = (np.concatenate(([0.0], recall)), np.concatenate(([precision[0]], precision)))
    return roc, pr


def image_curves(
    scores: Sequence[float], labels: Sequence[int]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """Exact image-level ROC and PR curves (few points); None without both good and defect."""
    y = np.asarray(labels) > 0
    if y.all() or not y.any():
        return None
    s = np.asarray(scores, dtype=np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    return (fpr, tpr), (recall[::-1], precision[::-1])


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
            Series(f"pixel  AUROC {_pct(metrics['pixel_auroc'])}", pixel and pixel[0],
                   _PIXEL_COLOR),
            Series(f"image  AUROC {_pct(metrics['image_auroc'])}", image and image[0],
                   _IMAGE_COLOR),
        ],
        diagonal=True,
    )  # fmt: skip
    pr = svg_plot(
        "Precision-recall",
        "recall",
        "precision",
        [
            Series(f"pixel  AP {_pct(metrics['pixel_ap'])}", pixel and pixel[1], _PIXEL_COLOR),
            Series(f"image  AP {_pct(metrics['image_ap'])}", image and image[1], _IMAGE_COLOR),
        ],
        diagonal=False,
    )
    return roc, pr


# --------------------------------------------------------------------------------------------
# Overlay tiles
# --------------------------------------------------------------------------------------------


def overlay_order(scores: Sequence[float], labels: Sequence[int], k: int) -> list[int]:
    """Indices of up to ``k`` images worth looking at: the defects the model scores lowest
    (missed first), then the good images it scores highest (false alarms first)."""
    defect = sorted((i for i, y in enumerate(labels) if y > 0), key=lambda i: (scores[i], i))
    good = sorted((i for i, y in enumerate(labels) if y <= 0), key=lambda i: (-scores[i], i))
    return (defect + good)[: max(0, k)]


def write_overlays(
    folder: Path,
    rel_to: Path,
    samples: Sequence[Sample],
    maps: Sequence[np.ndarray],
    pred_masks: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    scores: Sequence[float],
    indices: Sequence[int],
) -> list[OverlayRow]:
    """Write four PNG tiles per chosen image under ``folder``; paths come back relative."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for rank, i in enumerate(indices):
        sample = samples[i]
        image = load_image(sample.image_path)
        size = _tile_size(image.shape[:2])
        base = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        tiles = {
            "input": base,
            "map": _heat(base, maps[i], size),
            "pred": _outline(base, pred_masks[i], size, _PRED_RGB),
            "gt": _outline(base, gt_masks[i], size, _GT_RGB),
        }
        stem = f"{rank:02d}-{slug(sample.defect_type or 'image')}-{slug(sample.image_path.stem)}"
        paths = []
        for kind, tile in tiles.items():
            path = folder / f"{stem}-{kind}.png"
            Image.fromarray(tile).save(path)
            paths.append(path.relative_to(rel_to).as_posix())
        kind = sample.defect_type or ("defect" if sample.label > 0 else "good")
        where = f"{sample.image_path.parent.name}/{sample.image_path.name}"
        caption = f"{where} · {kind} · score {scores[i]:.3f}"
        rows.append(OverlayRow(caption, (paths[0], paths[1], paths[2], paths[3])))
    return rows


def _tile_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """(width, height) with the longest side TILE_SIDE, aspect kept (small images grow)."""
    height, width = int(shape[0]), int(shape[1])
    scale = TILE_SIDE / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _lut() -> np.ndarray:
    pos = [p for p, _ in _JET]
    grid = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(grid, pos, [c[ch] for _, c in _JET]) for ch in range(3)]
    return (np.stack(channels, axis=1) * 255).round().astype(np.uint8)


_LUT = _lut()


def _heat(base: np.ndarray, amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The map in jet on a fixed [0, 1] scale (comparable across images), over a grey input."""
    small = np.asarray(_resized(np.asarray(amap, dtype=np.float32), size, bilinear=True))
    colored = _LUT[(np.clip(small, 0.0, 1.0) * 255).round().astype(np.uint8)].astype(np.float32)
    grey = base.astype(np.float32).mean(axis=2, keepdims=True)
    return (_MAP_ALPHA * colored + (1 - _MAP_ALPHA) * grey).round().astype(np.uint8)


def _outline(
    base: np.ndarray, mask: np.ndarray, size: tuple[int, int], rgb: tuple[int, int, int]
) -> np.ndarray:
    """The input with the mask's boundary drawn ~2 px wide (nothing for an empty mask)."""
    small = np.asarray(_resized(np.asarray(mask, dtype=np.uint8) * 255, size)) > 127
    out = base.copy()
    if small.any():
        edge = small & ~ndimage.binary_erosion(small, border_value=0)
        out[ndimage.binary_dilation(edge)] = rgb
    return out


def _resized(array: np.ndarray, size: tuple[int, int], bilinear: bool = False) -> Image.Image:
    method = Image.Resampling.BILINEAR if bilinear else Image.Resampling.NEAREST
    return Image.fromarray(array).resize(size, method)


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (datasets name classes and files freely)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#f5f6f8}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 12px}h2{font-size:20px;margin:32px 0 8px;word-break:break-all}
h3{font-size:17px;margin:0 0 8px}h4{font-size:14px;margin:16px 0 6px;color:#555}
section.cls{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:16px;
margin:16px 0}
table{border-collapse:collapse;background:#fff}
table.m th,table.m td{border:1px solid #dde1e6;padding:4px 8px}
table.m td.v{text-align:right;font-variant-numeric:tabular-nums}
table.m th{background:#eef1f5;font-weight:600}
table.m tr.mean td{font-weight:700;background:#f7f9fb}
table.info td{padding:2px 12px 2px 0;vertical-align:top}table.info td:first-child{color:#666}
.plots{display:flex;gap:16px;flex-wrap:wrap;margin:12px 0}
svg.plot text{font-size:11px;fill:#333}svg.plot .t{font-size:13px;font-weight:600;
text-anchor:middle}
svg.plot .xt,svg.plot .xl{text-anchor:middle}svg.plot .yt{text-anchor:end}
svg.plot .yl{text-anchor:middle}
svg.plot .g{stroke:#e5e7eb;stroke-width:1}svg.plot .frame{fill:none;stroke:#888}
svg.plot .d{stroke:#aaa;stroke-dasharray:4 3}
table.ov td{padding:3px;vertical-align:top;text-align:center}
table.ov th{font-weight:600;color:#555;padding:3px}
table.ov img{display:block;max-width:224px;border-radius:3px}
table.ov td.cap{text-align:left;font-size:12px;color:#444;max-width:160px;word-break:break-all}
.bar{display:inline-block;width:160px;height:10px;vertical-align:middle;border-radius:2px;
background:linear-gradient(90deg,#000080,#0000ff 12.5%,#00ffff 37.5%,#ffff00 62.5%,
#ff0000 87.5%,#800000)}
.key{font-size:12px;color:#555;margin:4px 0}.sw{display:inline-block;width:12px;height:3px;
vertical-align:middle;margin:0 4px 0 10px}
.muted{color:#777}
"""


def _text(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _pct(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100.0 * value:.1f}"


def _metric_table(rows: Sequence[tuple[str, Mapping[str, float], str]]) -> str:
    """Rows of (label HTML, metrics, css class); values ×100 like ``format_table``."""
    head = "".join(f"<th>{html.escape(n)}</th>" for n in METRIC_NAMES)
    body = []
    for label, values, css in rows:
        cells = "".join(f'<td class="v">{_pct(values.get(n))}</td>' for n in METRIC_NAMES)
        body.append(f'<tr class="{css}"><td>{label}</td>{cells}</tr>')
    return f'<table class="m"><tr><th>class</th>{head}</tr>{"".join(body)}</table>'


def _class_html(anchor: str, cls: ClassReport) -> str:
    n_good = cls.n_images - cls.n_defect
    parts = [
        f'<section class="cls" id="{anchor}"><h3>{html.escape(cls.name)}</h3>',
        f'<p class="muted">{cls.n_images} images: {cls.n_defect} defect, {n_good} good</p>',
        _metric_table([(html.escape(cls.name), cls.metrics, "")]),
        f'<div class="plots">{cls.roc_svg}{cls.pr_svg}</div>',
    ]
    if cls.overlays:
        parts.append(
            "<h4>Overlays: defects with the lowest image score first, then good images with the "
            "highest</h4>"
            '<p class="key">map <span class="bar"></span> 0 → 1'
            f'<span class="sw" style="background:rgb{_PRED_RGB}"></span>prediction'
            f'<span class="sw" style="background:rgb{_GT_RGB}"></span>ground truth</p>'
            '<table class="ov"><tr><th></th><th>input</th><th>anomaly map</th>'
            "<th>predicted mask</th><th>ground truth</th></tr>"
        )
        for row in cls.overlays:
            tiles = "".join(
                f'<td><img src="{html.escape(src)}" alt="{alt}" loading="lazy"></td>'
                for src, alt in zip(row.tiles, ("input", "map", "prediction", "truth"), strict=True)
            )
            parts.append(f'<tr><td class="cap">{html.escape(row.caption)}</td>{tiles}</tr>')
        parts.append("</table>")
    parts.append("</section>")
    return "".join(parts)


def render_html(info: Mapping[str, object], datasets: Sequence[DatasetReport]) -> str:
    """The whole page; ``info`` is shown as a key/value table at the top."""
    info_rows = "".join(
        f"<tr><td>{html.escape(str(k).replace('_', ' '))}</td><td>{html.escape(_text(v))}</td></tr>"
        for k, v in info.items()
    )
    body = [
        "<h1>ClipSAM evaluation</h1>",
        f'<table class="info">{info_rows}</table>',
        '<p class="muted">Metrics ×100. Tables are exact (clipsam.metrics); the pixel curves '
        f"are drawn at {CURVE_BINS} thresholds.</p>",
    ]
    for d_index, dataset in enumerate(datasets):
        body.append(f"<h2>{html.escape(dataset.spec)}</h2>")
        anchors = [f"d{d_index}-{slug(c.name)}" for c in dataset.classes]
        rows = [
            (f'<a href="#{a}">{html.escape(c.name)}</a>', c.metrics, "")
            for a, c in zip(anchors, dataset.classes, strict=True)
        ]
        rows.append(("mean", dataset.mean, "mean"))
        body.append(_metric_table(rows))
        body += [_class_html(a, c) for a, c in zip(anchors, dataset.classes, strict=True)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ClipSAM evaluation</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(
    out_dir: Path, info: Mapping[str, object], datasets: Sequence[DatasetReport]
) -> Path:
    """Write ``out_dir/report.html`` (tiles are already under ``out_dir/images``)."""
    path = out_dir / "report.html"
    path.write_text(render_html(info, datasets), encoding="utf-8")
    return path
