"""The HTML report of ``python -m training.evaluate``: tables, ROC/PR curves and overlay grids.

The report is one ``report.html`` plus PNG tiles under ``images/`` referenced by relative paths,
so the folder can be zipped, copied or served as it is. Four modules, one concern each:
:mod:`~training.report.curves` (the numbers behind the curves), :mod:`~training.report.plots`
(inline SVG), :mod:`~training.report.overlays` (PNG tiles) and
:mod:`~training.report.html_page` (the page). Their public names are importable from here too.
"""

from __future__ import annotations

from training.report.curves import CURVE_BINS, image_curves, pixel_curves
from training.report.html_page import ClassReport, DatasetReport, render_html, write_report
from training.report.overlays import (
    GT_RGB,
    PRED_RGB,
    TILE_SIDE,
    OverlayRow,
    overlay_order,
    slug,
    write_overlays,
)
from training.report.plots import Series, curve_plots, pct, svg_plot

__all__ = [
    "CURVE_BINS",
    "GT_RGB",
    "PRED_RGB",
    "TILE_SIDE",
    "ClassReport",
    "DatasetReport",
    "OverlayRow",
    "Series",
    "curve_plots",
    "image_curves",
    "overlay_order",
    "pct",
    "pixel_curves",
    "render_html",
    "slug",
    "svg_plot",
    "write_overlays",
    "write_report",
]
