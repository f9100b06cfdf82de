"""Fetching the images that Label Studio tasks point at, without becoming an SSRF proxy.

Task data is written by whoever can import tasks, so every reference is untrusted: only http(s)
is fetched, every host (each redirect hop included) is resolved and refused when any address is
private/loopback/link-local/reserved, unless it is Label Studio's own host or allow-listed
(``CLIPSAM_ALLOWED_HOSTS``). Label Studio's credentials only ever go to Label Studio's origin.

DNS rebinding (a name that resolves to a public address when checked and to a private one when
connected): plain-http hops connect to the address that was checked (the URL is pinned to it and
the ``Host`` header keeps the name). https hops are not pinned, so httpx resolves again; a
rebound https connection still has to present a valid certificate for the attacker's name, which
an internal service cannot, so the window left is TLS-verified and closed in practice.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import numpy as np

from backend.settings import Settings
from clipsam.images import ImageError, load_image

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob", "azure-spi"})
_LS_PATH_PREFIXES = ("/data/upload/", "/data/local-files/", "/data/local-files?")
_LOCAL_FILES_PATH = "/data/local-files"
#: Refresh an access token this long before its ``exp``, so it does not expire in flight.
_TOKEN_MARGIN_S = 30.0
_USER_AGENT = "clipsam-labeling (Label Studio ML backend)"
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_JWT_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_Origin = tuple[str, str, int]


class FetchError(Exception):
    """An image reference could not be turned into an image.

    ``reason`` is short and safe to show users (no tokens, no presigned query strings).
    ``status`` hints at the HTTP status an API reporting this error should use (400 refused or
    unsupported reference, 413 too large, 422 undecodable, 500 misconfigured, 502 upstream
    failure, 504 timeout); ``upstream_status`` is what the image host answered, if it answered.
    """

    def __init__(self, reason: str, *, status: int = 502, upstream_status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.upstream_status = upstream_status


class ImageFetcher:
    """Turns task-data image references into RGB arrays; thread-safe, one per service."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self._settings = settings
        # trust_env=False: a proxy from the environment would connect on our behalf, unchecked.
        self._client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            timeout=settings.fetch_timeout,
            headers={"User-Agent": _USER_AGENT},
        )
        self._ls_base = _parse_ls_url(settings.label_studio_url)
        self._ls_origin = _origin(httpx.URL(self._ls_base)) if self._ls_base else None
        self._allowed_names, self._allowed_networks = _parse_allowed(settings.allowed_hosts)
        refresh_url = f"{self._ls_base}/api/token/refresh/" if self._ls_base else None
        self._auth = _LabelStudioAuth(
            settings.label_studio_api_key, refresh_url, self._client, settings.fetch_timeout
        )

    def fetch(self, reference: str, task_id: int | None = None) -> np.ndarray:
        """Return the referenced image as ``H×W×3 uint8`` RGB, EXIF orientation applied."""
        data = self.fetch_bytes(reference, task_id)
        try:
            return load_image(data, max_pixels=self._settings.max_image_pixels)
        except ImageError as exc:
            raise FetchError(f"image could not be decoded: {exc}", status=422) from exc

    def fetch_bytes(self, reference: str, task_id: int | None = None) -> bytes:
        """Return the raw bytes behind ``reference`` (at most ``max_image_bytes``)."""
        ref = reference.strip() if isinstance(reference, str) else ""
        scheme = _scheme(ref)
        if scheme in _CLOUD_SCHEMES:
            return self._download(self._presign_url(ref, task_id))
        if scheme in _DEFAULT_PORTS:
            relative = self._ls_relative(_parse_url(ref))
            local = self._local_file(relative) if relative is not None else None
            return self._read_local(local) if local is not None else self._download(ref)
        if scheme is None and ref.startswith(_LS_PATH_PREFIXES):
            local = self._local_file(ref)
            return self._read_local(local) if local is not None else self._download(self._ls(ref))
        raise FetchError(
            f"unsupported image reference {_describe(ref)}: expected an http(s) URL, "
            "/data/upload/..., /data/local-files/?d=..., or an s3://, gs://, azure-blob:// URI",
            status=400,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- references ------------------------------------------------------------------------

    def _ls(self, path: str) -> str:
        """Join a Label Studio path (``/data/...``, ``/tasks/...``) to LABEL_STUDIO_URL."""
        if self._ls_base is None:
            raise FetchError(
                f"{_describe(path)} lives in Label Studio: set LABEL_STUDIO_URL "
                "(e.g. http://localhost:8080) so the backend can download it",
                status=500,
            )
        return self._ls_base + path

    def _presign_url(self, uri: str, task_id: int | None) -> str:
        """Label Studio signs cloud-storage URIs for us; it needs the task to find the storage."""
        if task_id is None or isinstance(task_id, bool) or not isinstance(task_id, int):
            raise FetchError(
                f"{uri.split(':', 1)[0]}:// images need the task id for Label Studio to presign",
                status=400,
            )
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode("ascii")
        return self._ls(f"/tasks/{task_id}/presign/?{urlencode({'fileuri': fileuri})}")

    def _ls_relative(self, url: httpx.URL) -> str | None:
        """The path+query of ``url`` relative to LABEL_STUDIO_URL, or None for other origins."""
        if self._ls_base is None or _origin(url) != self._ls_origin:
            return None
        base = httpx.URL(self._ls_base).path.rstrip("/")
        if not url.path.startswith(base + "/"):
            return None
        query = url.query.decode("ascii", "replace")
        return url.path[len(base) :] + (f"?{query}" if query else "")

    def _local_file(self, relative: str) -> Path | None:
        """The file a ``/data/local-files/?d=...`` reference names under the local root, if any.

        Reading it from disk spares Label Studio a round trip; a path outside the root is
        refused outright rather than handed on to Label Studio.
        """
        root = self._settings.local_files_root
        parts = urlsplit(relative)
        if root is None or parts.path.rstrip("/") != _LOCAL_FILES_PATH:
            return None
        values = parse_qs(parts.query).get("d")
        if not values or not values[0]:
            return None
        try:
            base = root.resolve()
            path = (base / values[0]).resolve()
        except (OSError, ValueError) as exc:
            raise FetchError(f"invalid local file path: {exc}", status=400) from exc
        if not path.is_relative_to(base):
            raise FetchError("local file path escapes LOCAL_FILES_DOCUMENT_ROOT", status=400)
        return path if path.is_file() else None

    def _read_local(self, path: Path) -> bytes:
        limit = self._settings.max_image_bytes
        logger.debug("reading %s from LOCAL_FILES_DOCUMENT_ROOT", path)
        try:
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise FetchError(f"could not read local file: {exc.strerror}", status=500) from exc
        if len(data) > limit:
            raise _too_large(limit)
        return data

    # -- HTTP ------------------------------------------------------------------------------

    def _download(self, url: str) -> bytes:
        """GET ``url``, following redirects by hand so that every hop is checked first."""
        timeout = self._settings.fetch_timeout
        deadline = time.monotonic() + timeout
        current = _parse_url(url)
        hops = 0
        auth_retried = False
        while True:
            request_url, headers = self._prepare_hop(current)
            to_ls = self._ls_origin is not None and _origin(current) == self._ls_origin
            auth = self._auth.headers(deadline) if to_ls else {}
            logger.debug("GET %s", _redact(current))
            try:
                with self._client.stream(
                    "GET",
                    request_url,
                    headers={**headers, **auth},
                    timeout=_remaining(deadline, timeout),
                ) as response:
                    status = response.status_code
                    if status in _REDIRECT_CODES:
                        hops += 1
                        if hops > MAX_REDIRECTS:
                            raise FetchError(f"more than {MAX_REDIRECTS} redirects", status=502)
                        current = _follow(current, response)
                        continue
                    if status == 401 and auth and self._auth.refreshable and not auth_retried:
                        logger.info("Label Studio answered 401; refreshing the access token")
                        auth_retried = True
                        self._auth.invalidate(auth)
                        continue
                    if not 200 <= status < 300:
                        raise _status_error(current, status, to_ls, bool(auth))
                    return self._read_body(response, deadline)
            except httpx.TimeoutException as exc:
                raise _timed_out(timeout, current) from exc
            except httpx.HTTPError as exc:
                raise FetchError(
                    f"could not fetch from {current.host}: {type(exc).__name__}: {exc}"
                ) from exc

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        """Read at most ``max_image_bytes``, stopping as soon as the body goes over."""
        limit = self._settings.max_image_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit, int(declared))
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
            if time.monotonic() > deadline:  # a slow drip resets httpx's per-read timeout
                raise _timed_out(self._settings.fetch_timeout, response.request.url)
        return bytes(body)

    def _prepare_hop(self, url: httpx.URL) -> tuple[httpx.URL, dict[str, str]]:
        """Check one hop before connecting; pin plain http to the address that was checked."""
        if url.scheme not in _DEFAULT_PORTS:
            raise FetchError(f"refusing a {url.scheme}:// URL: only http(s) is fetched", status=400)
        if url.userinfo:
            raise FetchError("refusing a URL with embedded credentials", status=400)
        if not url.raw_host:
            raise FetchError("refusing a URL without a host", status=400)
        addresses = self._check_host(url)
        if not addresses or url.scheme != "http":
            return url, {}
        return url.copy_with(host=str(addresses[0])), {"Host": url.netloc.decode("ascii")}

    def _check_host(self, url: httpx.URL) -> list[_IPAddress] | None:
        """Addresses the host may be reached at; None when the host is trusted by name."""
        host = url.raw_host.decode("ascii").lower()
        if (self._ls_origin and host == self._ls_origin[1]) or host in self._allowed_names:
            return None
        literal = _ip(host)
        addresses = [literal] if literal else _resolve(host, url.port or _DEFAULT_PORTS[url.scheme])
        for address in addresses:
            kind = _forbidden_kind(address, self._allowed_networks)
            if kind:
                shown = host if literal else f"{host} ({address})"
                raise FetchError(
                    f"refusing to fetch from {shown}: {kind} address "
                    "(add it to CLIPSAM_ALLOWED_HOSTS if this is intended)",
                    status=400,
                )
        return addresses


class _LabelStudioAuth:
    """Turns LABEL_STUDIO_API_KEY into an Authorization header for Label Studio's origin.

    A legacy token is sent as ``Token <key>``. A personal access token is a JWT *refresh*
    token that Label Studio rejects on data URLs: it is exchanged at ``/api/token/refresh/``
    for a short-lived access token, cached until shortly before its ``exp`` or a 401.
    """

    def __init__(
        self, key: str | None, refresh_url: str | None, client: httpx.Client, timeout: float
    ) -> None:
        self._key = key
        self.refreshable = bool(key) and _looks_like_jwt(key or "")
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
                self._expires_at is not None and time.time() > self._expires_at - _TOKEN_MARGIN_S
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
                timeout=_remaining(deadline, self._timeout),
            )
        except httpx.TimeoutException as exc:
            raise _timed_out(self._timeout, httpx.URL(self._refresh_url)) from exc
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
        expires_at = _jwt_exp(access)
        logger.info(
            "exchanged LABEL_STUDIO_API_KEY for an access token (expires in %s s)",
            "?" if expires_at is None else round(expires_at - time.time()),
        )
        return access, expires_at


# -- helpers ------------------------------------------------------------------------------


def _parse_ls_url(url: str | None) -> str | None:
    """LABEL_STUDIO_URL without its trailing slash; a bad value is a start-up error."""
    if not url:
        return None
    parsed = httpx.URL(url.strip())
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
        raise ValueError(f"LABEL_STUDIO_URL must be an http(s) URL, got {url!r}")
    return str(parsed).rstrip("/")


def _parse_allowed(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple[_IPNetwork, ...]]:
    """Split CLIPSAM_ALLOWED_HOSTS into exact host names and IP networks (an IP is a /32)."""
    names: set[str] = set()
    networks: list[_IPNetwork] = []
    for entry in entries:
        text = entry.strip().strip("[]").lower()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            if "/" in text:
                logger.warning("ignoring CLIPSAM_ALLOWED_HOSTS entry %r: not a CIDR", entry)
            else:
                names.add(text.rstrip("."))
    return frozenset(names), tuple(networks)


def _origin(url: httpx.URL) -> _Origin:
    scheme = url.scheme
    return scheme, url.raw_host.decode("ascii").lower(), url.port or _DEFAULT_PORTS.get(scheme, 0)


def _parse_url(text: str) -> httpx.URL:
    try:
        return httpx.URL(text)
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise FetchError(f"invalid URL: {exc}", status=400) from exc


def _follow(current: httpx.URL, response: httpx.Response) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise FetchError(f"{response.status_code} redirect without a Location from {current.host}")
    try:
        return current.join(location)
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise FetchError(f"invalid redirect from {current.host}: {exc}") from exc


def _ip(host: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[_IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"could not resolve {host}: {exc}") from exc
    addresses = [_ip(str(info[4][0])) for info in infos]
    found = [address for address in addresses if address is not None]
    if not found:
        raise FetchError(f"could not resolve {host}: no addresses")
    return found


def _forbidden_kind(address: _IPAddress, allowed: tuple[_IPNetwork, ...]) -> str | None:
    """Why ``address`` may not be fetched from (None: it may), IPv4-mapped IPv6 unwrapped."""
    plain = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        plain = address.ipv4_mapped
    if any(plain in network or address in network for network in allowed):
        return None
    checks = (
        ("unspecified", plain.is_unspecified),
        ("loopback", plain.is_loopback),
        ("link-local", plain.is_link_local),
        ("multicast", plain.is_multicast),
        ("private", plain.is_private),
        ("reserved", plain.is_reserved),
        ("non-public", not plain.is_global),
    )
    return next((f"{name} {plain}" for name, bad in checks if bad), None)


def _scheme(reference: str) -> str | None:
    match = _SCHEME_RE.match(reference)
    return match.group(1).lower() if match and "://" in reference else None


def _looks_like_jwt(key: str) -> bool:
    parts = key.split(".")
    return (
        key.startswith("eyJ")
        and len(parts) == 3
        and all(_JWT_SEGMENT_RE.match(part) for part in parts)
    )


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying: only used to know when to refresh."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _remaining(deadline: float, total: float) -> httpx.Timeout:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"timed out after {total:g}s", status=504)
    return httpx.Timeout(left)


def _timed_out(total: float, url: httpx.URL) -> FetchError:
    return FetchError(f"timed out after {total:g}s fetching from {url.host}", status=504)


def _too_large(limit: int, size: int | None = None) -> FetchError:
    what = f"image is {size:,} bytes" if size is not None else "image is larger"
    return FetchError(
        f"{what}, over the {limit:,}-byte limit (CLIPSAM_MAX_IMAGE_BYTES)", status=413
    )


def _status_error(url: httpx.URL, status: int, to_ls: bool, authed: bool) -> FetchError:
    if not to_ls:
        return FetchError(f"{status} from {url.host}", upstream_status=status)
    hints = {
        401: "check LABEL_STUDIO_API_KEY" if authed else "set LABEL_STUDIO_API_KEY",
        403: "check LABEL_STUDIO_API_KEY (its user needs access to the project)",
        404: f"{url.path} not found",
    }
    hint = hints.get(status)
    return FetchError(
        f"{status} from Label Studio" + (f": {hint}" if hint else ""), upstream_status=status
    )


def _redact(url: httpx.URL) -> str:
    """A URL for logs: no query string (presigned URLs carry signatures there)."""
    return f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"


def _describe(reference: str) -> str:
    return repr(reference[:80] + ("..." if len(reference) > 80 else ""))
