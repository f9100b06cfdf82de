"""Label Studio's API key as an Authorization header, exchanging a personal access token.

A legacy token is sent as ``Token <key>``. A personal access token is a JWT *refresh* token that
Label Studio rejects on data URLs: it is exchanged at ``/api/token/refresh/`` for a short-lived
access token, cached until shortly before its ``exp`` or a 401.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time

import httpx

from labelstudio.errors import FetchError, remaining, timed_out

logger = logging.getLogger(__name__)

#: Refresh an access token this long before its ``exp``, so it does not expire in flight.
TOKEN_MARGIN_S = 30.0
_JWT_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


class LabelStudioAuth:
    """Turns LABEL_STUDIO_API_KEY into an Authorization header for Label Studio's origin."""

    def __init__(
        self, key: str | None, refresh_url: str | None, client: httpx.Client, timeout: float
    ) -> None:
        self._key = key
        self.refreshable = bool(key) and looks_like_jwt(key or "")
        self._refresh_url = refresh_url
        self._client = client
        self._timeout = timeout
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires_at: float | None = None

    def headers(self, deadline: float) -> dict[str, str]:
        if not self._key:
            return {}
        if not self.refreshable:
            return {"Authorization": f"Token {self._key}"}
        with self._lock:  # one exchange at a time, however many fetch threads need it
            if self._access is None or (
                self._expires_at is not None and time.time() > self._expires_at - TOKEN_MARGIN_S
            ):
                self._access, self._expires_at = self._exchange(deadline)
            return {"Authorization": f"Bearer {self._access}"}

    def invalidate(self, sent: dict[str, str]) -> None:
        """Drop the cached access token, unless another thread already replaced it."""
        with self._lock:
            if sent.get("Authorization") == f"Bearer {self._access}":
                self._access = None

    def _exchange(self, deadline: float) -> tuple[str, float | None]:
        assert self._refresh_url is not None  # only called for requests to Label Studio
        try:
            response = self._client.post(
                self._refresh_url,
                json={"refresh": self._key},
                timeout=remaining(deadline, self._timeout),
            )
        except httpx.TimeoutException as exc:
            raise timed_out(self._timeout, httpx.URL(self._refresh_url)) from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"could not reach Label Studio: {type(exc).__name__}") from exc
        status = response.status_code
        if status in (401, 403):
            raise FetchError(
                f"{status} from Label Studio's token refresh: LABEL_STUDIO_API_KEY (a personal "
                "access token) is invalid, expired or revoked",
                upstream_status=status,
            )
        if not 200 <= status < 300:
            raise FetchError(
                f"{status} from Label Studio's token refresh (/api/token/refresh/)",
                upstream_status=status,
            )
        try:
            access = response.json()["access"]
        except (ValueError, KeyError, TypeError):
            access = None
        if not isinstance(access, str) or not access:
            raise FetchError("Label Studio's token refresh answered without an access token")
        expires_at = jwt_exp(access)
        logger.info(
            "exchanged LABEL_STUDIO_API_KEY for an access token (expires in %s s)",
            "?" if expires_at is None else round(expires_at - time.time()),
        )
        return access, expires_at


def looks_like_jwt(key: str) -> bool:
    parts = key.split(".")
    return (
        key.startswith("eyJ")
        and len(parts) == 3
        and all(_JWT_SEGMENT_RE.match(part) for part in parts)
    )


def jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying: only used to know when to refresh."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
