"""Reading a project's label config: which image to fetch and which controls to fill.

Names (``from_name``, ``to_name``, the task data key, label values) always come from the config,
parsed once per distinct config with label-studio-sdk's ``LabelInterface``
(:func:`parse_interface`).
:func:`parse_label_config` is strict (what /predict and prelabel fill, or
:class:`LabelConfigError`); :func:`image_reference` is lenient (which task-data value is the
image, for annotations arriving by webhook or in an export: a guess when the config cannot say).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from label_studio_sdk.label_interface.interface import LabelInterface

from labelstudio.references import looks_like_image

logger = logging.getLogger(__name__)

SUPPORTED_CONTROLS = ("BrushLabels", "PolygonLabels", "RectangleLabels", "Choices")

#: Choice values that mean "this image has a defect" / "this image is fine" (lower case).
DEFECTIVE_WORDS = ("defective", "defect", "anomaly", "anomalous", "abnormal", "bad", "ng",
                   "damaged", "faulty", "fail", "reject", "yes")  # fmt: skip
GOOD_WORDS = ("good", "normal", "ok", "okay", "pass", "no defect", "flawless", "accept", "no")


class LabelConfigError(ValueError):
    """The label config cannot be served: no Image tag, or no control this backend fills."""


@dataclass(frozen=True)
class ControlSpec:
    """One control to fill: its kind, names, and the value(s) this backend writes into it."""

    kind: str  # one of SUPPORTED_CONTROLS
    from_name: str
    to_name: str
    label: str = ""  # the defect label (labels controls): the first, or CLIPSAM_DEFECT_LABEL
    defective: str = ""  # the choice for a defective image (verdict Choices)
    good: str = ""  # the choice for a good image (Choices)
    #: Defect types to choose among per region (labels controls with several defect labels)
    #: or per image (a Choices control of types); empty: one label for every region.
    types: tuple[str, ...] = ()
    multiple: bool = False  # a Choices control that takes several values (choice="multiple")


@dataclass(frozen=True)
class LabelSpec:
    image_name: str
    data_key: str  # task["data"][data_key] holds the image reference
    controls: tuple[ControlSpec, ...]

    @property
    def types(self) -> tuple[str, ...]:
        """Every defect type some control chooses among, in config order (none: no typing)."""
        return tuple(dict.fromkeys(t for control in self.controls for t in control.types))


@lru_cache(maxsize=64)
def parse_label_config(config: str, defect_label: str | None = None) -> LabelSpec:
    """The serving plan for a label config; :class:`LabelConfigError` says what is missing."""
    interface = parse_interface(config)
    images = {tag.name: tag for tag in interface.objects if tag.tag == "Image"}
    if not images:
        raise LabelConfigError("label config has no <Image> tag; this backend labels images")
    controls = []
    for control in interface.controls:
        targets = [name for name in control.to_name if name in images]
        if control.tag not in SUPPORTED_CONTROLS or not targets or _is_smart(control):
            continue
        multiple = str(getattr(control, "attr", {}).get("choice", "")).lower() == "multiple"
        spec = _control_spec(control.tag, control.name, targets[0], list(control.labels or []),
                             defect_label, multiple)  # fmt: skip
        if spec is not None:
            controls.append(spec)
    if not controls:
        raise LabelConfigError(
            "label config has no control this backend can fill on an <Image>; "
            f"supported: {', '.join(SUPPORTED_CONTROLS)}"
        )
    image_name = controls[0].to_name
    data_key = images[image_name].value_name
    if not data_key:
        raise LabelConfigError(f'<Image name="{image_name}"> has no value="$key"')
    return LabelSpec(image_name=image_name, data_key=data_key, controls=tuple(controls))


@lru_cache(maxsize=64)
def image_tag(config: str) -> tuple[str, str] | None:
    """(name, data key) of the config's first ``<Image value=...>``; None (warned once per
    config) when the config is unreadable or has none."""
    try:
        interface = parse_interface(config)
    except LabelConfigError as exc:
        logger.warning(
            "label config unreadable (%s); guessing the image key from task data", exc.__cause__
        )
        return None
    for tag in interface.objects:
        if tag.tag == "Image" and tag.value_name:
            return tag.name, tag.value_name
    logger.warning("label config has no <Image value=...>; guessing the image key from task data")
    return None


def image_reference(config: Any, data: dict[str, Any]) -> tuple[str | None, str | None]:
    """(image tag name or None, reference): from the config, else the first image-like value."""
    tag = image_tag(config) if isinstance(config, str) and config.strip() else None
    if tag is not None:
        value = data.get(tag[1])
        return tag[0], value if isinstance(value, str) and value else None
    for value in data.values():
        if isinstance(value, str) and looks_like_image(value):
            return None, value
    return None, None


@lru_cache(maxsize=64)
def parse_interface(config: str) -> LabelInterface:
    """The one parse of a config; :class:`LabelConfigError` when it is not valid XML."""
    try:
        return LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML and schema error types
        raise LabelConfigError(f"label config is not valid XML: {exc}") from exc


def _control_spec(
    kind: str,
    from_name: str,
    to_name: str,
    values: list[str],
    defect_label: str | None,
    multiple: bool = False,
) -> ControlSpec | None:
    if kind == "Choices":
        return _choices_spec(from_name, to_name, values, multiple)
    if not values:
        logger.warning("%s %r has no labels; it is left empty", kind, from_name)
        return None
    if defect_label:
        if defect_label not in values:
            raise LabelConfigError(
                f"CLIPSAM_DEFECT_LABEL={defect_label!r} is not a label of {kind} {from_name!r}; "
                f"its labels are: {', '.join(values)}"
            )
        return ControlSpec(kind, from_name, to_name, label=defect_label)
    generic = _match_choice(values, DEFECTIVE_WORDS)
    if generic:  # a catch-all "Defect" label: every region gets it, as the author intended
        return ControlSpec(kind, from_name, to_name, label=generic)
    types = _defect_types(values)
    label = types[0] if types else values[0]
    return ControlSpec(kind, from_name, to_name, label=label,
                       types=types if len(types) >= 2 else ())  # fmt: skip


#: Attributes that make a control, or one of its labels, a smart tool.
SMART_ATTRS = ("smart", "smartOnly")


def _truthy(value: Any) -> bool:
    """A config attribute meaning yes ("true", "1", "yes")."""
    return str(value).strip().lower() in ("true", "1", "yes")


def smart_parts(control: Any) -> tuple[bool, frozenset[str]]:
    """(the whole control is a smart tool, the labels marked smart on their own)."""
    whole = any(_truthy((control.attr or {}).get(key)) for key in SMART_ATTRS)
    labels = frozenset(
        value
        for value, tag in (control.labels_attrs or {}).items()
        if any(_truthy((tag.attr or {}).get(key)) for key in SMART_ATTRS)
    )
    return whole, labels


def _is_smart(control: Any) -> bool:
    """A smart tool prompts SAM; it is the annotator's, so pre-annotation leaves it empty."""
    whole, labels = smart_parts(control)
    return whole or bool(labels)


def _choices_spec(
    from_name: str, to_name: str, values: list[str], multiple: bool
) -> ControlSpec | None:
    """A verdict (a value meaning "defective") or, failing that, a list of defect types."""
    defective, good = _match_choice(values, DEFECTIVE_WORDS), _match_choice(values, GOOD_WORDS)
    if defective:
        return ControlSpec("Choices", from_name, to_name, defective=defective, good=good)
    types = _defect_types(values)
    if len(types) < 2:
        logger.warning(
            "Choices %r has neither a value meaning 'defective' nor two defect types among %s; "
            "it is left empty", from_name, values,
        )  # fmt: skip
        return None
    return ControlSpec("Choices", from_name, to_name, good=good, types=types, multiple=multiple)


def _defect_types(values: list[str]) -> tuple[str, ...]:
    """The values that name a kind of defect: all but those meaning "good"."""
    good = {_normalise(w) for w in GOOD_WORDS}
    return tuple(v for v in values if _normalise(v) not in good)


def _normalise(value: str) -> str:
    return re.sub(r"[\s_-]+", " ", value).strip().lower()


def _match_choice(values: list[str], words: tuple[str, ...]) -> str:
    """The first config value whose normalised text is one of ``words`` (in ``words`` order)."""
    normalised = {_normalise(v): v for v in values}
    for word in words:
        if word in normalised:
            return normalised[word]
    return ""
