"""An HTTP client that will not become an SSRF proxy.

Only http(s) is fetched; every host (each redirect hop included) is resolved and refused when
any address is private/loopback/link-local/reserved, unless it is the trusted origin's host
(Label Studio's own) or allow-listed (``CLIPSAM_ALLOWED_HOSTS``). Credentials only ever go to
the trusted origin. Bodies stop at ``max_bytes`` and the whole download at ``timeout``.

DNS rebinding (a name that resolves to a public address when checked and to a private one when
connected): plain-http hops connect to the address that was checked (the URL is pinned to it and
the ``Host`` header keeps the name). https hops are not pinned, so httpx resolves again; a
rebound https connection still has to present a valid certificate for the attacker's name, which
an internal service cannot, so the window left is TLS-verified and closed in practice.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time

import httpx

from labelstudio.auth import LabelStudioAuth
from labelstudio.errors import FetchError, remaining, timed_out, too_large
from labelstudio.references import DEFAULT_PORTS, Origin, origin, parse_url

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "clipsam-labeling (Label Studio ML backend)"

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class GuardedClient:
    """GETs public URLs (and the trusted origin's), following redirects hop by hop."""

    def __init__(
        self,
        *,
        timeout: float,
        max_bytes: int,
        allowed_hosts: tuple[str, ...] = (),
        trusted_origin: Origin | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.trusted_origin = trusted_origin
        self._allowed_names, self._allowed_networks = parse_allowed(allowed_hosts)
        # trust_env=False: a proxy from the environment would connect on our behalf, unchecked.
        self.http = httpx.Client(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            timeout=timeout,
            headers={"User-Agent": _USER_AGENT},
        )

    def close(self) -> None:
        self.http.close()

    def download(self, url: str, auth: LabelStudioAuth | None = None) -> bytes:
        """GET ``url``, following redirects by hand so that every hop is checked first.

        ``auth`` signs requests to the trusted origin only (and is refreshed once on a 401).
        """
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        current = parse_url(url)
        hops = 0
        auth_retried = False
        while True:
            request_url, headers = self._prepare_hop(current)
            trusted = self.trusted_origin is not None and origin(current) == self.trusted_origin
            sent = auth.headers(deadline) if (trusted and auth is not None) else {}
            logger.debug("GET %s", _redact(current))
            try:
                with self.http.stream(
                    "GET",
                    request_url,
                    headers={**headers, **sent},
                    timeout=remaining(deadline, timeout),
                ) as response:
                    status = response.status_code
                    if status in _REDIRECT_CODES:
                        hops += 1
                        if hops > MAX_REDIRECTS:
                            raise FetchError(f"more than {MAX_REDIRECTS} redirects", status=502)
                        current = _follow(current, response)
                        continue
                    if (
                        status == 401
                        and sent
                        and auth is not None
                        and auth.refreshable
                        and not auth_retried
                    ):
                        logger.info("Label Studio answered 401; refreshing the access token")
                        auth_retried = True
                        auth.invalidate(sent)
                        continue
                    if not 200 <= status < 300:
                        raise _status_error(current, status, trusted, bool(sent))
                    return self._read_body(response, deadline)
            except httpx.TimeoutException as exc:
                raise timed_out(timeout, current) from exc
            except httpx.HTTPError as exc:
                raise FetchError(
                    f"could not fetch from {current.host}: {type(exc).__name__}: {exc}"
                ) from exc

    def _read_body(self, response: httpx.Response, deadline: float) -> bytes:
        """Read at most ``max_bytes``, stopping as soon as the body goes over."""
        limit = self.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(limit, int(declared))
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
            if time.monotonic() > deadline:  # a slow drip resets httpx's per-read timeout
                raise timed_out(self.timeout, response.request.url)
        return bytes(body)

    def _prepare_hop(self, url: httpx.URL) -> tuple[httpx.URL, dict[str, str]]:
        """Check one hop before connecting; pin plain http to the address that was checked."""
        if url.scheme not in DEFAULT_PORTS:
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
        trusted = self.trusted_origin is not None and host == self.trusted_origin[1]
        if trusted or host in self._allowed_names:
            return None
        literal = _ip(host)
        addresses = [literal] if literal else _resolve(host, url.port or DEFAULT_PORTS[url.scheme])
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


def parse_allowed(entries: tuple[str, ...]) -> tuple[frozenset[str], tuple[_IPNetwork, ...]]:
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
