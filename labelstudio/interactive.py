"""Label Studio's interactive pre-annotations (smart tools): the config's smart tools and the
context an annotator's click or box sends, read into SAM prompts.

The editor posts the regions just drawn with a smart ``KeyPointLabels``/``RectangleLabels`` as
``context.result``, which Label Studio forwards to ``/predict`` as ``params.context``. Each item
is a result item in percent of the image, with ``original_width``/``original_height``; smart
keypoints carry ``is_positive`` (false for an Alt-click: a background point). Anything this
module cannot read is a :class:`ContextError` (the backend answers 422), never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from labelstudio.label_config import ControlSpec, LabelConfigError, parse_interface, smart_parts

#: Smart tool tags and the result ``type`` their regions arrive with.
SMART_TOOLS = {"KeyPointLabels": "keypointlabels", "RectangleLabels": "rectanglelabels"}
#: Where the mask goes, in order of preference.
OUTPUT_CONTROLS = ("BrushLabels", "PolygonLabels")


class ContextError(ValueError):
    """The interactive context cannot be turned into prompts."""


@dataclass(frozen=True)
class SmartTool:
    """A KeyPointLabels/RectangleLabels control: smart as a whole, or on some of its labels."""

    kind: str  # result type: keypointlabels or rectanglelabels
    smart: bool
    smart_labels: frozenset[str]

    def is_smart(self, label: str | None) -> bool:
        return self.smart or (label is not None and label in self.smart_labels)


@dataclass(frozen=True)
class InteractiveConfig:
    """What a smart-tool config asks for: the image, the smart tools, the control to fill."""

    data_key: str  # task["data"][data_key] holds the image reference
    output: ControlSpec  # Brush (preferred) or Polygon; ``label`` is the fallback label
    labels: tuple[str, ...]  # the output control's labels
    tools: tuple[tuple[str, SmartTool], ...]  # by from_name

    def label_for(self, chosen: str | None) -> str:
        """The annotator's label when the output control has it, else the fallback."""
        return chosen if chosen in self.labels else self.output.label


@dataclass(frozen=True)
class Prompts:
    """One prompt set, in percent of the image (the frame Label Studio works in)."""

    points: tuple[tuple[float, float], ...]
    positive: tuple[bool, ...]
    box: tuple[float, float, float, float, float] | None  # x, y, width, height, rotation (deg)
    label: str | None  # the label the annotator chose on the smart region
    frame: tuple[int, int] | None  # (original_width, original_height) Label Studio reported

    @property
    def negatives(self) -> int:
        return self.positive.count(False)

    def in_pixels(self, width: int, height: int) -> PixelPrompts:
        """The prompts for an image of ``width`` × ``height`` pixels (percent is relative, so
        this holds even if the reported ``frame`` differs from the image fetched)."""
        points = labels = box = None
        if self.points:
            scale = np.array([width / 100, height / 100], dtype=np.float32)
            points = np.array(self.points, dtype=np.float32) * scale
            labels = np.array(self.positive, dtype=np.int64)
        if self.box is not None:
            box = _box_pixels(self.box, width, height)
        return points, labels, box


#: (points (P, 2) XY or None, point labels (P,) 1/0 or None, box (4,) XYXY or None), pixels.
PixelPrompts = tuple[
    npt.NDArray[np.float32] | None, npt.NDArray[np.int64] | None, npt.NDArray[np.float32] | None
]


def find_context(params: Any, extra: dict[str, Any] | None) -> Any:
    """The context of a /predict body: ``params.context`` (Label Studio), else a top-level
    ``context``; None for an ordinary prediction."""
    context = params.get("context") if isinstance(params, dict) else None
    if context is None and extra:
        context = extra.get("context")
    return context


@lru_cache(maxsize=64)
def interactive_config(config: str, defect_label: str | None = None) -> InteractiveConfig:
    """The smart tools of ``config`` and the control their masks go to; a
    :class:`LabelConfigError` says why the config cannot take interactive masks."""
    interface = parse_interface(config)
    images = {tag.name: tag for tag in interface.objects if tag.tag == "Image"}
    tools: list[tuple[str, SmartTool]] = []
    image_name = None
    for control in interface.controls:
        if control.tag in SMART_TOOLS and any(name in images for name in control.to_name):
            smart, smart_labels = smart_parts(control)
            if smart or smart_labels:
                tools.append((control.name, SmartTool(SMART_TOOLS[control.tag], smart,
                                                      smart_labels)))  # fmt: skip
                image_name = image_name or next(n for n in control.to_name if n in images)
    if image_name is None:
        raise LabelConfigError(
            "label config has no smart tool: mark a KeyPointLabels or RectangleLabels on an "
            '<Image> smart="true" (or one of its labels)'
        )
    for kind in OUTPUT_CONTROLS:
        for control in interface.controls:
            if control.tag == kind and image_name in control.to_name and control.labels:
                labels = tuple(control.labels)
                label = defect_label if defect_label and defect_label in labels else labels[0]
                output = ControlSpec(kind, control.name, image_name, label=label)
                data_key = images[image_name].value_name
                if not data_key:
                    raise LabelConfigError(f'<Image name="{image_name}"> has no value="$key"')
                return InteractiveConfig(data_key, output, labels, tuple(tools))
    raise LabelConfigError(
        f"label config has smart tools but no {' or '.join(OUTPUT_CONTROLS)} (with labels) on "
        f'<Image name="{image_name}"> to put their masks in'
    )


def read_context(context: Any, config: InteractiveConfig) -> Prompts:
    """The prompts in ``context.result``: every smart keypoint, and the last smart box.

    Items of other types (a per-region text or choice the editor sends along) are skipped;
    a smart item that cannot be read is an error, as is a context with no smart item.
    """
    if not isinstance(context, dict):
        raise ContextError(f"context must be an object, not {type(context).__name__}")
    items = context.get("result")
    if not isinstance(items, list) or not items:
        raise ContextError("context.result must be a non-empty list of smart regions")
    tools = dict(config.tools)
    points: list[tuple[float, float]] = []
    positive: list[bool] = []
    box = label = frame = None
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ContextError(f"context.result[{index}] is not an object")
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in SMART_TOOLS.values():
            continue
        where = f"context.result[{index}] ({kind})"
        tool = tools.get(str(item.get("from_name")))
        value = item.get("value")
        if not isinstance(value, dict):
            raise ContextError(f"{where} has no value object")
        chosen = _chosen_label(value, kind)
        if tool is None or tool.kind != kind or not tool.is_smart(chosen):
            raise ContextError(
                f"{where}: from_name {item.get('from_name')!r} is not a smart {kind} tool of "
                f"this label config (smart ones: {', '.join(tools) or 'none'})"
            )
        x, y = _percent(value, "x", where), _percent(value, "y", where)
        if kind == "keypointlabels":
            points.append((x, y))
            positive.append(_is_positive(item.get("is_positive", True), where))
        else:
            width, height = _percent(value, "width", where), _percent(value, "height", where)
            if width <= 0 or height <= 0:
                raise ContextError(f"{where}: the box is empty ({width} × {height} %)")
            box = (x, y, width, height, _number(value.get("rotation", 0), "rotation", where))
        label, frame = chosen or label, _frame(item, where) or frame
    if not points and box is None:
        raise ContextError(
            "context.result has no smart keypoint or rectangle "
            f"(types sent: {', '.join(sorted({str(i.get('type')) for i in items})) or 'none'})"
        )
    if points and not any(positive) and box is None:
        raise ContextError("only negative points: click the object at least once, or draw a box")
    return Prompts(tuple(points), tuple(positive), box, label, frame)


def _chosen_label(value: dict[str, Any], kind: str) -> str | None:
    for key in (kind, "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None


def _number(raw: Any, name: str, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise ContextError(f"{where}: value.{name} must be a number, got {raw!r}")
    return float(raw)


def _percent(value: dict[str, Any], name: str, where: str) -> float:
    number = _number(value.get(name), name, where)
    if not 0.0 <= number <= 100.0:
        raise ContextError(f"{where}: value.{name}={number} is not a percentage in [0, 100]")
    return number


def _is_positive(raw: Any, where: str) -> bool:
    if isinstance(raw, bool) or raw in (0, 1):
        return bool(raw)
    raise ContextError(f"{where}: is_positive must be true/false or 1/0, got {raw!r}")


def _frame(item: dict[str, Any], where: str) -> tuple[int, int] | None:
    width, height = item.get("original_width"), item.get("original_height")
    if width is None and height is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise ContextError(f"{where}: original_width/height must be positive integers")
    return int(width), int(height)  # type: ignore[arg-type]


def _box_pixels(
    box: tuple[float, float, float, float, float], width: int, height: int
) -> npt.NDArray[np.float32]:
    """XYXY pixels of a Label Studio rectangle (rotated about its top-left corner: its
    axis-aligned bounds), clipped to the image."""
    x, y, w, h, rotation = box
    x0, y0, w, h = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    corners = [(x0 + dx * cos - dy * sin, y0 + dx * sin + dy * cos)
               for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]  # fmt: skip
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return np.array(
        [max(0.0, min(xs)), max(0.0, min(ys)), min(width, max(xs)), min(height, max(ys))],
        dtype=np.float32,
    )
