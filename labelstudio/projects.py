"""Project ids, as Label Studio sends them in webhooks, exports and requests."""

from __future__ import annotations

from typing import Any


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
