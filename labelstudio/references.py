"""Which image a task-data reference names, and where to get it from.

Task data points at images in several ways: an http(s) URL (maybe on Label Studio itself),
``/data/upload/...`` and ``/data/local-files/?d=...`` paths relative to Label Studio, and
cloud-storage URIs (``s3://``, ``gs://``, ``azure-blob://``) that Label Studio presigns for the
task. :class:`References` turns one into a local file under ``LOCAL_FILES_DOCUMENT_ROOT`` (a
path escaping the root is refused) or into the URL to download. Nothing is fetched here.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from labelstudio.errors import FetchError

DEFAULT_PORTS = {"http": 80, "https": 443}
CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob", "azure-spi"})
LS_PATH_PREFIXES = ("/data/upload/", "/data/local-files/", "/data/local-files?")
LOCAL_FILES_PATH = "/data/local-files"
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
#: What an image reference in task data looks like, when no label config names the key.
_IMAGE_REF = re.compile(
    r"^(https?://|/data/|s3://|gs://|azure-blob://|data:image/)"
    r"|\.(png|jpe?g|bmp|gif|tiff?|webp)(\?.*)?$",
    re.IGNORECASE,
)

Origin = tuple[str, str, int]


class References:
    """Reference rules for one Label Studio (``label_studio_url``) and local-files root."""

    def __init__(self, label_studio_url: str | None, local_files_root: Path | None) -> None:
        self.base = parse_ls_url(label_studio_url)
        self.origin = origin(httpx.URL(self.base)) if self.base else None
        self.local_files_root = local_files_root

    def resolve(self, reference: str, task_id: int | None = None) -> Path | str:
        """The local file ``reference`` names, or the URL to download it from."""
        ref = reference.strip() if isinstance(reference, str) else ""
        kind = scheme(ref)
        if kind in CLOUD_SCHEMES:
            return self.presign_url(ref, task_id)
        if kind in DEFAULT_PORTS:
            relative = self.ls_relative(parse_url(ref))
            local = self.local_file(relative) if relative is not None else None
            return local if local is not None else ref
        if kind is None and ref.startswith(LS_PATH_PREFIXES):
            local = self.local_file(ref)
            return local if local is not None else self.ls(ref)
        raise FetchError(
            f"unsupported image reference {describe(ref)}: expected an http(s) URL, "
            "/data/upload/..., /data/local-files/?d=..., or an s3://, gs://, azure-blob:// URI",
            status=400,
        )

    def ls(self, path: str) -> str:
        """Join a Label Studio path (``/data/...``, ``/tasks/...``) to LABEL_STUDIO_URL."""
        if self.base is None:
            raise FetchError(
                f"{describe(path)} lives in Label Studio: set LABEL_STUDIO_URL "
                "(e.g. http://localhost:8080) so the backend can download it",
                status=500,
            )
        return self.base + path

    def presign_url(self, uri: str, task_id: int | None) -> str:
        """Label Studio signs cloud-storage URIs for us; it needs the task to find the storage."""
        if task_id is None or isinstance(task_id, bool) or not isinstance(task_id, int):
            raise FetchError(
                f"{uri.split(':', 1)[0]}:// images need the task id for Label Studio to presign",
                status=400,
            )
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode("ascii")
        return self.ls(f"/tasks/{task_id}/presign/?{urlencode({'fileuri': fileuri})}")

    def ls_relative(self, url: httpx.URL) -> str | None:
        """The path+query of ``url`` relative to LABEL_STUDIO_URL, or None for other origins."""
        if self.base is None or origin(url) != self.origin:
            return None
        base = httpx.URL(self.base).path.rstrip("/")
        if not url.path.startswith(base + "/"):
            return None
        query = url.query.decode("ascii", "replace")
        return url.path[len(base) :] + (f"?{query}" if query else "")

    def local_file(self, relative: str) -> Path | None:
        """The file a ``/data/local-files/?d=...`` reference names under the local root, if any.

        Reading it from disk spares Label Studio a round trip; a path outside the root is
        refused outright rather than handed on to Label Studio.
        """
        root = self.local_files_root
        parts = urlsplit(relative)
        if root is None or parts.path.rstrip("/") != LOCAL_FILES_PATH:
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


def looks_like_image(value: str) -> bool:
    """Whether a task-data value looks like an image reference (a guess, without a config)."""
    return bool(_IMAGE_REF.search(value.strip()))


def parse_ls_url(url: str | None) -> str | None:
    """LABEL_STUDIO_URL without its trailing slash; a bad value is a start-up error."""
    if not url:
        return None
    parsed = httpx.URL(url.strip())
    if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
        raise ValueError(f"LABEL_STUDIO_URL must be an http(s) URL, got {url!r}")
    return str(parsed).rstrip("/")


def origin(url: httpx.URL) -> Origin:
    kind = url.scheme
    return kind, url.raw_host.decode("ascii").lower(), url.port or DEFAULT_PORTS.get(kind, 0)


def parse_url(text: str) -> httpx.URL:
    try:
        return httpx.URL(text)
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise FetchError(f"invalid URL: {exc}", status=400) from exc


def scheme(reference: str) -> str | None:
    match = _SCHEME_RE.match(reference)
    return match.group(1).lower() if match and "://" in reference else None


def describe(reference: str) -> str:
    return repr(reference[:80] + ("..." if len(reference) > 80 else ""))
