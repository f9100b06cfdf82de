"""One human correction from Label Studio, reduced to what retraining needs.

A Label Studio annotation (brush, polygon and rectangle regions in percent of the image, plus
choices) becomes a :class:`Correction`: the task's image reference, its category and one binary
defect mask stored as an uncompressed run-length code. The mask is the union of every region on
the image, because the head learns "defect or not" per pixel, not which tool drew it. An
annotation without regions is kept: a person looked at the image and found nothing, which is a
good (all-negative) training sample.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from labelstudio.label_config import image_reference

logger = logging.getLogger(__name__)

#: Result types that draw pixels on the image; ``brush`` etc. come from label-less tools.
REGION_TYPES = frozenset(
    {"brushlabels", "brush", "polygonlabels", "polygon", "rectanglelabels", "rectangle"}
)


@dataclass(frozen=True)
class Correction:
    """A person's verdict on one task's image: which pixels are defective (maybe none)."""

    annotation_id: int
    task_id: int
    project: str
    image: str
    category: str | None
    #: ``{"counts": [...], "size": [h, w]}`` (see :func:`encode_rle`); None when no size is known,
    #: which can only happen without regions and so means an all-good mask.
    mask_rle: dict[str, Any] | None
    labels: list[str] = field(default_factory=list)
    annotator: int | str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    was_cancelled: bool = False
    ground_truth: bool = False
    has_defect: bool = False

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), so equal corrections give equal text."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Correction:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a stored correction must be a JSON object")
        known = {f.name for f in fields(cls)}
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        missing = required - data.keys()
        if missing:
            raise ValueError(f"stored correction lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def mask(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The defect mask as bool (h, w); ``shape`` is needed when no size was ever known."""
        if self.mask_rle is None:
            if shape is None:
                raise ValueError(
                    f"annotation {self.annotation_id} has no mask size; pass the image shape"
                )
            return np.zeros(tuple(shape), dtype=bool)
        mask = decode_rle(self.mask_rle)
        if shape is not None and tuple(shape) != mask.shape:
            raise ValueError(
                f"annotation {self.annotation_id}: mask is {mask.shape}, image is {tuple(shape)}"
            )
        return mask


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Row-major run lengths of a 2-D mask, the first run counting False (maybe 0)."""
    array = np.asarray(mask).astype(bool)
    if array.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {array.shape}")
    flat = array.ravel()
    if flat.size == 0:
        return {"counts": [], "size": list(array.shape)}
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], starts, [flat.size]))
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return {"counts": [int(c) for c in counts], "size": [int(s) for s in array.shape]}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """The bool mask of :func:`encode_rle`; refuses codes whose runs do not fill the size."""
    try:
        height, width = (int(s) for s in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a mask RLE: {exc}") from exc
    if counts.ndim != 1 or (counts < 0).any() or height < 0 or width < 0:
        raise ValueError("mask RLE needs non-negative run lengths and size")
    if int(counts.sum()) != height * width:
        raise ValueError(f"mask RLE covers {int(counts.sum())} pixels, size is {height}×{width}")
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.repeat(values, counts).reshape(height, width)


def correction_from_event(
    event: dict[str, Any], category_key: str = "category", default_category: str | None = None
) -> Correction:
    """The :class:`Correction` in an ``ANNOTATION_CREATED``/``ANNOTATION_UPDATED`` payload.

    Raises :class:`ValueError` naming what is missing or inconsistent, so a bad event is
    reported once instead of poisoning the training set.
    """
    if not isinstance(event, dict):
        raise ValueError(f"event must be a JSON object, got {type(event).__name__}")
    annotation = event.get("annotation")
    if not isinstance(annotation, dict):
        raise ValueError("event has no 'annotation' object")
    annotation_id = _int(annotation.get("id"), "annotation id")
    task = event.get("task")
    if not isinstance(task, dict):
        task = annotation.get("task") if isinstance(annotation.get("task"), dict) else None
    if task is None:
        raise ValueError(f"annotation {annotation_id}: event has no 'task' object")
    task_ref = annotation.get("task")
    task_id = _int(task.get("id", task_ref if not isinstance(task_ref, dict) else None), "task id")
    project = project_id(event.get("project"), annotation.get("project"), task.get("project"))
    if project is None:
        raise ValueError(f"annotation {annotation_id}: event names no project")
    data = task.get("data")
    if not isinstance(data, dict):
        raise ValueError(f"annotation {annotation_id}: task {task_id} has no 'data' object")

    config = (
        event["project"].get("label_config") if isinstance(event.get("project"), dict) else None
    )
    image_name, image = image_reference(config, data)
    if not image:
        raise ValueError(
            f"annotation {annotation_id}: no image reference found in task {task_id} data"
        )
    category = data.get(category_key)
    category = str(category) if category not in (None, "") else default_category

    result = annotation.get("result") or []
    if not isinstance(result, list):
        raise ValueError(f"annotation {annotation_id}: 'result' must be a list")
    try:
        mask, labels = _rasterise(result, image_name)
    except ValueError as exc:
        raise ValueError(f"annotation {annotation_id}: {exc}") from exc
    return Correction(
        annotation_id=annotation_id,
        task_id=task_id,
        project=project,
        image=image,
        category=category,
        mask_rle=None if mask is None else encode_rle(mask),
        labels=labels,
        annotator=_annotator(annotation.get("completed_by")),
        created_at=_text_or_none(annotation.get("created_at")),
        updated_at=_text_or_none(annotation.get("updated_at")),
        was_cancelled=bool(annotation.get("was_cancelled", False)),
        ground_truth=bool(annotation.get("ground_truth", False)),
        has_defect=bool(mask is not None and mask.any()),
    )


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"missing {what}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def project_id(*candidates: Any) -> str | None:
    """The first usable project id among ``candidates``, as Label Studio's id string.

    Label Studio sends the project as an object, an id, or ``"<id>.<created timestamp>"``.
    """
    for candidate in candidates:
        if isinstance(candidate, dict):
            candidate = candidate.get("id")
        if candidate is None or isinstance(candidate, bool) or candidate == "":
            continue
        return str(candidate).split(".", 1)[0]
    return None


def _annotator(value: Any) -> int | str | None:
    if isinstance(value, dict):  # some serializers expand the user
        value = value.get("id", value.get("email"))
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _rasterise(items: list[Any], image_name: str | None) -> tuple[np.ndarray | None, list[str]]:
    """Union mask of the region items on ``image_name`` (all images when None), and labels."""
    labels: list[str] = []
    size: tuple[int, int] | None = None
    regions: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("result items must be objects")
        if image_name is not None and item.get("to_name", image_name) != image_name:
            continue
        kind = str(item.get("type", "")).lower()
        value = item.get("value") if isinstance(item.get("value"), dict) else {}
        for label in value.get(kind) or []:
            if isinstance(label, str) and label not in labels:
                labels.append(label)
        if "original_height" in item and "original_width" in item:
            item_size = (_int(item["original_height"], "original_height"),
                         _int(item["original_width"], "original_width"))  # fmt: skip
            if min(item_size) <= 0:
                raise ValueError(f"image size must be positive, got {item_size}")
            if size is not None and item_size != size:
                raise ValueError(f"result items disagree on the image size: {size} vs {item_size}")
            size = item_size
        if kind in REGION_TYPES:
            if "original_height" not in item or "original_width" not in item:
                raise ValueError(f"{kind} item without original_width/original_height")
            regions.append(item)
    if size is None:
        return None, labels
    mask = np.zeros(size, dtype=bool)
    for item in regions:
        kind = item["type"].lower()
        value = item.get("value") or {}
        if kind.startswith("brush"):
            mask |= _brush(value, size)
        elif kind.startswith("polygon"):
            mask |= _polygon(value, size)
        else:
            mask |= _rectangle(value, size)
    return mask, labels


def _brush(value: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle as decode_brush

    rle = value.get("rle")
    if not isinstance(rle, list) or not rle:
        raise ValueError("brush item without an 'rle' list")
    try:
        flat = decode_brush(rle)
    except Exception as exc:  # a truncated bit stream fails deep inside the SDK
        raise ValueError(f"brush RLE does not decode: {exc}") from exc
    height, width = size
    if flat.size != height * width * 4:
        raise ValueError(f"brush RLE holds {flat.size} values, expected {height}×{width}×4")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def _polygon(value: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    height, width = size
    points = value.get("points")
    if not isinstance(points, list):
        raise ValueError("polygon item without a 'points' list")
    try:
        # Percent → pixel edges; PIL puts pixel centres on integers, hence the half-pixel shift.
        xy = [(float(x) * width / 100 - 0.5, float(y) * height / 100 - 0.5) for x, y in points]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"polygon points must be [x, y] pairs: {exc}") from exc
    canvas = Image.new("1", (width, height), 0)
    if len(xy) < 3:
        logger.warning("polygon with %d point(s) ignored", len(xy))
    else:
        ImageDraw.Draw(canvas).polygon(xy, fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def _rectangle(value: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    height, width = size
    try:
        x, y = float(value["x"]), float(value["y"])
        w, h = float(value["width"]), float(value["height"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"rectangle needs numeric x, y, width, height: {exc}") from exc
    if float(value.get("rotation") or 0) % 360:
        logger.warning(
            "rectangle rotated by %s° rasterised unrotated (rotation is not supported)",
            value.get("rotation"),
        )
    mask = np.zeros(size, dtype=bool)
    if w <= 0 or h <= 0:
        return mask
    # A pixel belongs to the box when its centre does; a sliver still marks one pixel.
    x0, x1 = _span(x * width / 100, (x + w) * width / 100, width)
    y0, y1 = _span(y * height / 100, (y + h) * height / 100, height)
    mask[y0:y1, x0:x1] = True
    return mask


def _span(start: float, stop: float, limit: int) -> tuple[int, int]:
    lo = max(0, min(limit, math.floor(start + 0.5)))
    hi = max(0, min(limit, math.floor(stop + 0.5)))
    if hi <= lo and lo < limit:
        hi = lo + 1
    return lo, hi
