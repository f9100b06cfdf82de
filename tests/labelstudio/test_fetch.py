"""ImageFetcher against real HTTP servers on 127.0.0.1, and SSRF refusals that never connect.

Only loopback may receive traffic from these tests: every fetcher gets a transport that forwards
127.0.0.1/localhost requests and fails the test on anything else, and refusal tests use a
transport that fails if it is called at all, so a refusal must happen before any connection.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from labelstudio.errors import FetchError
from labelstudio.fetch import ImageFetcher
from labelstudio.settings import FetchSettings

# -- images -------------------------------------------------------------------------------


def _png(width: int = 8, height: int = 6) -> bytes:
    img = Image.new("RGB", (width, height), (10, 20, 30))
    img.putpixel((0, 0), (255, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
PNG_ARRAY = np.asarray(Image.open(io.BytesIO(PNG)).convert("RGB"))


def _jpeg_rotated() -> bytes:
    """40 wide × 20 tall as stored; EXIF Orientation=6 makes it 20 wide × 40 tall on screen."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 100, 50)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of all zeros: huge in pixels, tiny on disk."""
    row = b"\0" * (1 + (width + 7) // 8)
    rows_per_block = max(1, 1_000_000 // len(row))
    compressor = zlib.compressobj(6)
    full, rest = divmod(height, rows_per_block)
    parts = [compressor.compress(row * rows_per_block) for _ in range(full)]
    parts += [compressor.compress(row * rest), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _jwt(claims: dict[str, Any]) -> str:
    def segment(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(claims)}.c2lnbmF0dXJl"


# -- fake servers -------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


Route = Callable[["_Handler", Seen], None]


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(
            self.command,
            self.path,
            {key.lower(): value for key, value in self.headers.items()},
            self.rfile.read(length) if length else b"",
        )
        self.server.seen.append(seen)
        route = self.server.routes.get(urlsplit(self.path).path)
        if route is None:
            self.reply(404, b"not found")
        else:
            route(self, seen)

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class _Server:
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: _Server) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = fake.routes
        self.seen: list[Seen] = fake.seen

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (size limits, timeouts) are expected here


def respond(status: int = 200, body: bytes = PNG, headers: dict[str, str] | None = None) -> Route:
    return lambda handler, seen: handler.reply(status, body, headers)


def redirect(location: str, status: int = 302) -> Route:
    return respond(status, b"", {"Location": location})


@pytest.fixture
def make_server() -> Iterator[Callable[[], _Server]]:
    started: list[tuple[_HTTPServer, threading.Thread]] = []

    def make() -> _Server:
        fake = _Server()
        httpd = _HTTPServer(fake)
        # _Server holds the same dict/list objects the handler threads write to.
        fake.httpd = httpd
        thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((httpd, thread))
        return fake

    yield make
    for httpd, thread in started:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(make_server: Callable[[], _Server]) -> _Server:
    return make_server()


# -- transports and fetchers --------------------------------------------------------------


class LoopbackOnly(httpx.BaseTransport):
    """Real HTTP, but only to loopback: anything else fails the test instead of connecting."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.blocked: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host not in ("127.0.0.1", "localhost"):
            self.blocked.append(str(request.url))
            pytest.fail(f"the fetcher tried to connect to {request.url}")
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class NeverCalled(httpx.BaseTransport):
    """Proves a refusal happened before any connection."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(str(request.url))
        pytest.fail(f"the fetcher tried to connect to {request.url}")


MakeFetcher = Callable[..., ImageFetcher]


@pytest.fixture
def make_fetcher() -> Iterator[MakeFetcher]:
    fetchers: list[ImageFetcher] = []

    def make(transport: httpx.BaseTransport | None = None, **settings: Any) -> ImageFetcher:
        settings.setdefault("fetch_timeout", 5.0)
        api_key = settings.pop("label_studio_api_key", None)  # never a fetch setting
        fetcher = ImageFetcher(
            FetchSettings(**settings), api_key, transport=transport or LoopbackOnly()
        )
        fetchers.append(fetcher)
        return fetcher

    yield make
    for fetcher in fetchers:
        fetcher.close()


# -- plain http ---------------------------------------------------------------------------


def test_fetches_png_from_an_allowed_host(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/x.png"] = respond(200, PNG, {"Content-Type": "image/png"})
    fetcher = make_fetcher(allowed_hosts=("127.0.0.1",))
    image = fetcher.fetch(f"{server.url}/x.png")
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, PNG_ARRAY)
    assert fetcher.fetch_bytes(f"{server.url}/x.png") == PNG


def test_jpeg_exif_orientation_is_applied(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/r.jpg"] = respond(200, _jpeg_rotated())
    image = make_fetcher(allowed_hosts=("127.0.0.1",)).fetch(f"{server.url}/r.jpg")
    assert image.shape == (40, 20, 3)


def test_http_error_status_is_reported(server: _Server, make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher(allowed_hosts=("127.0.0.1",))
    with pytest.raises(FetchError, match=r"404 from 127\.0\.0\.1") as info:
        fetcher.fetch(f"{server.url}/missing.png")
    assert info.value.upstream_status == 404


def test_relative_redirects_are_followed(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/old.png"] = redirect("/new.png", 301)
    server.routes["/new.png"] = respond(200, PNG)
    image = make_fetcher(allowed_hosts=("127.0.0.1",)).fetch(f"{server.url}/old.png")
    np.testing.assert_array_equal(image, PNG_ARRAY)
    assert server.paths() == ["/old.png", "/new.png"]


def test_redirect_loops_stop_after_five_hops(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/loop"] = redirect("/loop")
    with pytest.raises(FetchError, match="redirects"):
        make_fetcher(allowed_hosts=("127.0.0.1",)).fetch(f"{server.url}/loop")
    assert len(server.seen) == 6


# -- Label Studio: legacy token -----------------------------------------------------------


def _token_guarded(token: str) -> Route:
    def route(handler: _Handler, seen: Seen) -> None:
        if seen.headers.get("authorization") == f"Token {token}":
            handler.reply(200, PNG)
        else:
            handler.reply(401, b'{"detail": "Authentication credentials were not provided."}')

    return route


def test_legacy_token_is_sent_to_label_studio(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/data/upload/1/x.png"] = _token_guarded("abc")
    fetcher = make_fetcher(label_studio_url=server.url, label_studio_api_key="abc")
    np.testing.assert_array_equal(fetcher.fetch("/data/upload/1/x.png"), PNG_ARRAY)
    # A full URL on Label Studio's origin is treated the same way.
    np.testing.assert_array_equal(fetcher.fetch(f"{server.url}/data/upload/1/x.png"), PNG_ARRAY)
    assert [seen.headers["authorization"] for seen in server.seen] == ["Token abc"] * 2


@pytest.mark.parametrize(("key", "hint"), [("wrong", "check"), (None, "set")])
def test_rejected_token_says_which_setting(
    server: _Server, make_fetcher: MakeFetcher, key: str | None, hint: str
) -> None:
    server.routes["/data/upload/1/x.png"] = _token_guarded("abc")
    fetcher = make_fetcher(label_studio_url=server.url, label_studio_api_key=key)
    with pytest.raises(FetchError, match=f"401 from Label Studio: {hint} LABEL_STUDIO_API_KEY"):
        fetcher.fetch("/data/upload/1/x.png")


def test_label_studio_paths_need_label_studio_url(make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher(transport=NeverCalled())
    with pytest.raises(FetchError, match="set LABEL_STUDIO_URL"):
        fetcher.fetch("/data/upload/1/x.png")
    with pytest.raises(FetchError, match="set LABEL_STUDIO_URL"):
        fetcher.fetch("s3://bucket/key.png", task_id=3)


def test_credentials_never_go_to_another_origin(
    make_server: Callable[[], _Server], make_fetcher: MakeFetcher
) -> None:
    ls, other = make_server(), make_server()
    other.routes["/x.png"] = respond(200, PNG)
    fetcher = make_fetcher(label_studio_url=ls.url, label_studio_api_key="abc")
    fetcher.fetch(f"{other.url}/x.png")  # same host as Label Studio, other port: no auth
    assert "authorization" not in other.seen[0].headers
    assert ls.seen == []


# -- Label Studio: personal access token --------------------------------------------------


class FakeLabelStudio:
    """Implements the PAT flow: refresh JWT in, access JWT out, Bearer access on data URLs."""

    def __init__(self, server: _Server, pat: str, access_ttl: float = 3600.0) -> None:
        self.pat = pat
        self.access_ttl = access_ttl
        self.refreshes = 0
        self.valid: str | None = None
        self.always_401 = False
        server.routes["/api/token/refresh/"] = self.refresh
        server.routes["/data/upload/1/x.png"] = self.upload

    def refresh(self, handler: _Handler, seen: Seen) -> None:
        body = json.loads(seen.body or b"{}")
        if seen.method != "POST" or body.get("refresh") != self.pat:
            handler.reply(401, b'{"detail": "Token is invalid or expired"}')
            return
        self.refreshes += 1
        exp = int(time.time() + self.access_ttl)
        self.valid = _jwt({"token_type": "access", "exp": exp, "jti": str(self.refreshes)})
        handler.reply(200, json.dumps({"access": self.valid}).encode())

    def upload(self, handler: _Handler, seen: Seen) -> None:
        good = (
            self.valid is not None and seen.headers.get("authorization") == f"Bearer {self.valid}"
        )
        if good and not self.always_401:
            handler.reply(200, PNG)
        else:
            handler.reply(401, b"{}")


PAT = _jwt({"token_type": "refresh", "exp": int(time.time()) + 86400, "jti": "pat"})


def test_pat_is_exchanged_once_and_cached(server: _Server, make_fetcher: MakeFetcher) -> None:
    ls = FakeLabelStudio(server, PAT)
    fetcher = make_fetcher(label_studio_url=server.url, label_studio_api_key=PAT)
    for _ in range(3):
        np.testing.assert_array_equal(fetcher.fetch("/data/upload/1/x.png"), PNG_ARRAY)
    assert ls.refreshes == 1
    uploads = [seen for seen in server.seen if seen.path.startswith("/data/")]
    assert {seen.headers["authorization"] for seen in uploads} == {f"Bearer {ls.valid}"}
    assert PAT not in {seen.headers.get("authorization", "").split(" ")[-1] for seen in uploads}


def test_expired_access_token_is_refreshed(server: _Server, make_fetcher: MakeFetcher) -> None:
    ls = FakeLabelStudio(server, PAT, access_ttl=-10)  # every access token is already expired
    fetcher = make_fetcher(label_studio_url=server.url, label_studio_api_key=PAT)
    fetcher.fetch("/data/upload/1/x.png")
    fetcher.fetch("/data/upload/1/x.png")
    assert ls.refreshes == 2
    uploads = [seen for seen in server.seen if seen.path.startswith("/data/")]
    assert len({seen.headers["authorization"] for seen in uploads}) == 2


def test_401_refreshes_and_retries_once(server: _Server, make_fetcher: MakeFetcher) -> None:
    ls = FakeLabelStudio(server, PAT)
    fetcher = make_fetcher(label_studio_url=server.url, label_studio_api_key=PAT)
    fetcher.fetch("/data/upload/1/x.png")
    ls.valid = "revoked"  # Label Studio no longer accepts the cached access token
    np.testing.assert_array_equal(fetcher.fetch("/data/upload/1/x.png"), PNG_ARRAY)
    assert ls.refreshes == 2

    ls.always_401 = True
    with pytest.raises(FetchError, match="401 from Label Studio: check LABEL_STUDIO_API_KEY"):
        fetcher.fetch("/data/upload/1/x.png")
    assert ls.refreshes == 3  # one retry, no loop


def test_rejected_pat_is_reported(server: _Server, make_fetcher: MakeFetcher) -> None:
    ls = FakeLabelStudio(server, PAT)
    other = _jwt({"token_type": "refresh", "jti": "someone-else"})
    fetcher = make_fetcher(label_studio_url=server.url, label_studio_api_key=other)
    with pytest.raises(FetchError, match="token refresh: LABEL_STUDIO_API_KEY"):
        fetcher.fetch("/data/upload/1/x.png")
    assert ls.refreshes == 0


# -- local files --------------------------------------------------------------------------


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "img.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    return root


@pytest.mark.parametrize(
    "reference",
    [
        "/data/local-files/?d=sub/img.png",
        "/data/local-files/?d=sub%2Fimg.png",
        "http://ls.example:8080/data/local-files/?d=sub/img.png",
    ],
)
def test_local_files_are_read_from_disk(
    local_root: Path, make_fetcher: MakeFetcher, reference: str
) -> None:
    transport = NeverCalled()
    fetcher = make_fetcher(
        transport, local_files_root=local_root, label_studio_url="http://ls.example:8080"
    )
    np.testing.assert_array_equal(fetcher.fetch(reference), PNG_ARRAY)
    assert transport.calls == []


@pytest.mark.parametrize(
    "path", ["../../etc/passwd", "../secret.png", "/etc/passwd", "sub/../../secret.png"]
)
def test_local_file_traversal_is_refused(
    local_root: Path, make_fetcher: MakeFetcher, path: str
) -> None:
    transport = NeverCalled()
    fetcher = make_fetcher(
        transport, local_files_root=local_root, label_studio_url="http://ls.example:8080"
    )
    with pytest.raises(FetchError, match="escapes LOCAL_FILES_DOCUMENT_ROOT"):
        fetcher.fetch(f"/data/local-files/?d={path}")
    assert transport.calls == []


def test_missing_local_file_falls_back_to_label_studio(
    local_root: Path, server: _Server, make_fetcher: MakeFetcher
) -> None:
    server.routes["/data/local-files/"] = _token_guarded("abc")
    fetcher = make_fetcher(
        local_files_root=local_root, label_studio_url=server.url, label_studio_api_key="abc"
    )
    np.testing.assert_array_equal(fetcher.fetch("/data/local-files/?d=other.png"), PNG_ARRAY)
    assert server.seen[0].query == {"d": ["other.png"]}


def test_local_file_over_the_byte_limit(local_root: Path, make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher(NeverCalled(), local_files_root=local_root, max_image_bytes=20)
    with pytest.raises(FetchError, match="byte limit"):
        fetcher.fetch("/data/local-files/?d=sub/img.png")


# -- cloud storage via presign ------------------------------------------------------------


@pytest.mark.parametrize(
    "uri", ["s3://bucket/key.png", "gs://bucket/dir/key.png", "azure-blob://container/key.png"]
)
def test_cloud_uri_is_presigned_by_label_studio(
    make_server: Callable[[], _Server], make_fetcher: MakeFetcher, uri: str
) -> None:
    ls, storage = make_server(), make_server()
    storage.routes["/signed/key.png"] = respond(200, PNG)

    def presign(handler: _Handler, seen: Seen) -> None:
        if seen.headers.get("authorization") != "Token abc":
            handler.reply(401)
            return
        fileuri = base64.urlsafe_b64decode(seen.query["fileuri"][0]).decode()
        handler.reply(302, b"", {"Location": f"{storage.url}/signed/key.png?sig={fileuri}"})

    ls.routes["/tasks/7/presign/"] = presign
    fetcher = make_fetcher(label_studio_url=ls.url, label_studio_api_key="abc")
    np.testing.assert_array_equal(fetcher.fetch(uri, task_id=7), PNG_ARRAY)
    assert len(ls.seen) == 1
    assert storage.seen[0].query == {"sig": [uri]}
    assert "authorization" not in storage.seen[0].headers  # other port, other origin


def test_cloud_uri_needs_a_task_id(make_fetcher: MakeFetcher) -> None:
    fetcher = make_fetcher(NeverCalled(), label_studio_url="http://ls.example:8080")
    with pytest.raises(FetchError, match="task id"):
        fetcher.fetch("s3://bucket/key.png")


# -- SSRF ---------------------------------------------------------------------------------


def test_loopback_is_refused_unless_allowed(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/x.png"] = respond(200, PNG)
    with pytest.raises(FetchError, match=r"refusing to fetch from 127\.0\.0\.1: loopback"):
        make_fetcher().fetch(f"{server.url}/x.png")
    assert server.seen == []


@pytest.mark.parametrize(
    ("reference", "kind"),
    [
        ("http://10.1.2.3/x.png", "private"),
        ("https://192.168.1.10/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://[::ffff:10.0.0.1]/x.png", r"private 10\.0\.0\.1"),  # IPv4-mapped, unwrapped
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://100.64.0.1/x.png", "non-public"),
        ("http://224.0.0.1/x.png", "multicast"),
    ],
)
def test_private_addresses_are_refused_before_connecting(
    make_fetcher: MakeFetcher, reference: str, kind: str
) -> None:
    transport = NeverCalled()
    with pytest.raises(FetchError, match=f"refusing to fetch from .*{kind}"):
        make_fetcher(transport).fetch(reference)
    assert transport.calls == []


def test_urls_with_credentials_are_refused(make_fetcher: MakeFetcher) -> None:
    transport = NeverCalled()
    fetcher = make_fetcher(transport, allowed_hosts=("127.0.0.1",))
    with pytest.raises(FetchError, match="credentials"):
        fetcher.fetch("http://user:pass@127.0.0.1:9/x.png")


def test_redirect_to_a_private_address_is_refused(
    server: _Server, make_fetcher: MakeFetcher
) -> None:
    server.routes["/start.png"] = redirect("http://10.0.0.1/x.png")
    transport = LoopbackOnly()
    with pytest.raises(FetchError, match=r"refusing to fetch from 10\.0\.0\.1: private"):
        make_fetcher(transport, allowed_hosts=("127.0.0.1",)).fetch(f"{server.url}/start.png")
    assert transport.blocked == []
    assert server.paths() == ["/start.png"]


def test_redirect_to_another_scheme_is_refused(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/start.png"] = redirect("file:///etc/passwd")
    with pytest.raises(FetchError, match="only http"):
        make_fetcher(allowed_hosts=("127.0.0.1",)).fetch(f"{server.url}/start.png")


@pytest.mark.parametrize("allowed", ["127.0.0.0/8", "127.0.0.1", "LocalHost"])
def test_allow_list_entries(server: _Server, make_fetcher: MakeFetcher, allowed: str) -> None:
    server.routes["/x.png"] = respond(200, PNG)
    fetcher = make_fetcher(allowed_hosts=(allowed,))
    url = f"{server.url}/x.png"
    if allowed == "LocalHost":
        url = url.replace("127.0.0.1", "localhost")
    np.testing.assert_array_equal(fetcher.fetch(url), PNG_ARRAY)


def test_allow_list_cidr_matches_ipv4_mapped_addresses(make_fetcher: MakeFetcher) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:  # a mock: nothing is sent
        requests.append(request)
        return httpx.Response(200, content=PNG)

    fetcher = make_fetcher(httpx.MockTransport(handler), allowed_hosts=("10.0.0.0/8",))
    np.testing.assert_array_equal(fetcher.fetch("http://[::ffff:10.0.0.1]/x.png"), PNG_ARRAY)
    assert len(requests) == 1


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names resolve from this table only: no DNS query leaves the machine."""
    table: dict[str, list[str]] = {}

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in table:
            pytest.fail(f"unexpected DNS lookup of {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def test_public_http_host_is_pinned_to_the_checked_address(
    fake_dns: dict[str, list[str]], make_fetcher: MakeFetcher
) -> None:
    fake_dns["images.example.com"] = ["93.184.216.34"]
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=PNG)

    fetcher = make_fetcher(httpx.MockTransport(handler))
    np.testing.assert_array_equal(fetcher.fetch("http://images.example.com/x.png"), PNG_ARRAY)
    assert requests[0].url.host == "93.184.216.34"
    assert requests[0].headers["host"] == "images.example.com"


def test_any_private_address_of_a_name_refuses_it(
    fake_dns: dict[str, list[str]], make_fetcher: MakeFetcher
) -> None:
    fake_dns["mixed.example.com"] = ["93.184.216.34", "10.0.0.5"]
    transport = NeverCalled()
    with pytest.raises(FetchError, match=r"mixed.example.com \(10.0.0.5\): private"):
        make_fetcher(transport).fetch("https://mixed.example.com/x.png")


# -- limits -------------------------------------------------------------------------------


def test_declared_content_length_over_limit(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/big.png"] = respond(200, b"\0" * 5000)
    fetcher = make_fetcher(allowed_hosts=("127.0.0.1",), max_image_bytes=1000)
    with pytest.raises(FetchError, match="5,000 bytes, over the 1,000-byte limit") as info:
        fetcher.fetch(f"{server.url}/big.png")
    assert info.value.status == 413


def test_endless_body_without_length_is_cut_off(server: _Server, make_fetcher: MakeFetcher) -> None:
    def endless(handler: _Handler, seen: Seen) -> None:
        handler.send_response(200)
        handler.end_headers()  # no Content-Length: HTTP/1.0 body runs until the socket closes
        end = time.monotonic() + 5
        try:
            while time.monotonic() < end:
                handler.wfile.write(b"\0" * 65536)
        except OSError:
            pass

    server.routes["/endless"] = endless
    fetcher = make_fetcher(allowed_hosts=("127.0.0.1",), max_image_bytes=200_000)
    started = time.monotonic()
    with pytest.raises(FetchError, match="larger, over the 200,000-byte limit"):
        fetcher.fetch(f"{server.url}/endless")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("size", [4000, 20000])
def test_decompression_bomb_is_refused(
    server: _Server, make_fetcher: MakeFetcher, size: int
) -> None:
    bomb = _bomb_png(size, size)
    assert len(bomb) < 200_000
    server.routes["/bomb.png"] = respond(200, bomb)
    fetcher = make_fetcher(allowed_hosts=("127.0.0.1",), max_image_pixels=10_000_000)
    with pytest.raises(FetchError, match="pixels") as info:
        fetcher.fetch(f"{server.url}/bomb.png")
    assert info.value.status == 422


def test_non_image_bytes_are_refused(server: _Server, make_fetcher: MakeFetcher) -> None:
    server.routes["/x.png"] = respond(200, b"<html>definitely not a PNG</html>")
    with pytest.raises(FetchError, match="could not be decoded"):
        make_fetcher(allowed_hosts=("127.0.0.1",)).fetch(f"{server.url}/x.png")


def test_slow_server_times_out(server: _Server, make_fetcher: MakeFetcher) -> None:
    def slow(handler: _Handler, seen: Seen) -> None:
        time.sleep(1.5)
        with contextlib.suppress(OSError):
            handler.reply(200, PNG)

    server.routes["/slow.png"] = slow
    fetcher = make_fetcher(allowed_hosts=("127.0.0.1",), fetch_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out after 0.5s") as info:
        fetcher.fetch(f"{server.url}/slow.png")
    assert time.monotonic() - started < 1.4
    assert info.value.status == 504


# -- unsupported references ---------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "file:///etc/passwd",
        "ftp://x/y.png",
        "/etc/passwd",
        "img.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "//127.0.0.1/x.png",
        "",
    ],
)
def test_unsupported_references(make_fetcher: MakeFetcher, reference: str) -> None:
    transport = NeverCalled()
    fetcher = make_fetcher(transport, label_studio_url="http://ls.example:8080")
    with pytest.raises(FetchError, match="unsupported image reference") as info:
        fetcher.fetch(reference)
    assert info.value.status == 400
    assert transport.calls == []
