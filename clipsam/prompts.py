"""The text prompt ensemble (method spec §1): state phrases × 35 photo templates."""

from __future__ import annotations

from collections.abc import Sequence

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

GENERIC_CATEGORY = "object"


def category_phrase(category: str | None) -> str:
    """``metal_nut`` → ``metal nut``; empty → a generic object word."""
    phrase = " ".join((category or "").replace("_", " ").replace("-", " ").split())
    return phrase or GENERIC_CATEGORY


def defect_states(defect_words: Sequence[str] = ()) -> tuple[str, ...]:
    """Abnormal state phrases plus the user's words: ``scratched`` → ``scratched {}``.

    A word that already holds ``{}`` is used as a state phrase as it is (``{} with a dent``).
    """
    extra = [w.strip() if "{}" in w else f"{w.strip()} {{}}" for w in defect_words if w.strip()]
    return ABNORMAL_STATES + tuple(extra)


def prompt_sentences(
    category: str | None, defect_words: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """All sentences for the normal and the abnormal state, in a fixed order."""
    phrase = category_phrase(category)
    normal = [t.format(s.format(phrase)) for s in NORMAL_STATES for t in TEMPLATES]
    abnormal = [t.format(s.format(phrase)) for s in defect_states(defect_words) for t in TEMPLATES]
    return normal, abnormal
