"""The promotion rule: a retrained head serves only if it is not worse than the serving one.

Both heads are judged on the same held-out corrections (``correction_loop.retrain.judge_head``):
the pixel metric (AUROC by default, which ranks pixels whatever the threshold) and, when the
metrics hold it, what the annotator sees at each head's own threshold (region Dice, and whether
it returns any region on the held-out defects). Why: README and docs/method.md §13.
"""

from __future__ import annotations

import math


def decide(
    candidate: str,
    candidate_metrics: dict[str, float],
    serving_metrics: dict[str, float] | None,
    key: str = "pixel_auroc",
    tolerance: float = 0.0,
    region_key: str = "region_dice",
    region_tolerance: float = 0.0,
) -> tuple[bool, str]:
    """Promote iff the candidate is not worse than the serving head on ``key`` and, when the
    metrics hold what the annotator sees (``training.region_metrics``), on ``region_key`` too,
    and returns regions on the held-out defects.

    "Not worse" is ``candidate >= serving - tolerance``. A missing or nan candidate score is
    worse than anything; a missing or nan serving score (or no serving head) loses. A candidate
    whose metrics have ``region_key`` must also have returned a region on some held-out
    defective image (``defect_images_with_regions`` > 0): a head that shows the annotator
    nothing is never promoted, whatever its AUROC. Metrics without ``region_key`` (heads judged
    before the region gate) are judged on ``key`` alone. Returns ``(ok, reason)`` with every
    number compared, for the history and the logs.
    """
    if math.isnan(tolerance) or math.isnan(region_tolerance):
        raise ValueError("tolerance must be a number, got nan")
    ok, parts = _compare(key, candidate_metrics, serving_metrics, tolerance)
    texts = [parts]
    if region_key in candidate_metrics:
        region_ok, region_text = _compare(
            region_key, candidate_metrics, serving_metrics, region_tolerance
        )
        shown = _score(candidate_metrics, "defect_images_with_regions")
        if not shown > 0:  # nan (no held-out defects) is not > 0 either
            region_ok = False
            region_text += (
                f"; returns no region on held-out defects (defect_images_with_regions {shown:.2f})"
            )
        ok = ok and region_ok
        texts.append(region_text)
    verdict = "promote" if ok else "reject"
    return ok, f"{verdict} {candidate}: " + "; ".join(texts)


def _compare(
    key: str,
    candidate: dict[str, float],
    serving: dict[str, float] | None,
    tolerance: float,
) -> tuple[bool, str]:
    """(candidate not worse than serving on ``key``, the comparison in words)."""
    new = _score(candidate, key)
    if serving is None:
        ok = not math.isnan(new)
        return ok, (
            f"{key} {new:.4f}, no serving head to compare with"
            + ("" if ok else f" (candidate has no valid {key})")
        )
    old = _score(serving, key)
    if math.isnan(new):
        ok = False
    elif math.isnan(old):
        ok = True
    else:
        ok = new >= old - tolerance
    relation = ">=" if ok else "<"
    return ok, f"{key} {new:.4f} {relation} serving {old:.4f} - tolerance {tolerance:g}"


def _score(metrics: dict[str, float], key: str) -> float:
    value = metrics.get(key)
    try:
        return float("nan") if value is None else float(value)
    except (TypeError, ValueError):
        return float("nan")
