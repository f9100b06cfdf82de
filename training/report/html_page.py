"""The HTML page: run info, metric tables, the plots and the overlay grids of every class."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipsam.metrics import METRIC_NAMES
from training.report.curves import CURVE_BINS
from training.report.overlays import GT_RGB, PRED_RGB, OverlayRow, slug
from training.report.plots import pct


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


def _metric_table(rows: Sequence[tuple[str, Mapping[str, float], str]]) -> str:
    """Rows of (label HTML, metrics, css class); values ×100 like ``format_table``."""
    head = "".join(f"<th>{html.escape(n)}</th>" for n in METRIC_NAMES)
    body = []
    for label, values, css in rows:
        cells = "".join(f'<td class="v">{pct(values.get(n))}</td>' for n in METRIC_NAMES)
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
            f'<span class="sw" style="background:rgb{PRED_RGB}"></span>prediction'
            f'<span class="sw" style="background:rgb{GT_RGB}"></span>ground truth</p>'
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
