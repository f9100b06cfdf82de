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
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np

from labelstudio.label_config import image_reference
from labelstudio.projects import project_id
from labelstudio.rasterise import as_int, rasterise, rasterise_by_label


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
    #: Per defect label, the union of the regions carrying it (RLE as ``mask_rle``): what the
    #: defect-type classifier learns from. Empty without labelled regions, and in old records.
    label_masks: dict[str, dict[str, Any]] = field(default_factory=dict)

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

    def label_mask(self, label: str) -> np.ndarray:
        """The bool mask of the regions labelled ``label`` (see ``label_masks``)."""
        return decode_rle(self.label_masks[label])

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
    annotation_id = as_int(annotation.get("id"), "annotation id")
    task = event.get("task")
    if not isinstance(task, dict):
        task = annotation.get("task") if isinstance(annotation.get("task"), dict) else None
    if task is None:
        raise ValueError(f"annotation {annotation_id}: event has no 'task' object")
    task_ref = annotation.get("task")
    task_id = as_int(
        task.get("id", task_ref if not isinstance(task_ref, dict) else None), "task id"
    )
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
        mask, labels = rasterise(result, image_name)
        by_label = rasterise_by_label(result, image_name)
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
        label_masks={label: encode_rle(m) for label, m in by_label.items()},
    )


def _annotator(value: Any) -> int | str | None:
    if isinstance(value, dict):  # some serializers expand the user
        value = value.get("id", value.get("email"))
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
