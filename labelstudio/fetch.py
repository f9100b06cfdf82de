"""Fetching the images that Label Studio tasks point at, without becoming an SSRF proxy.

Task data is written by whoever can import tasks, so every reference is untrusted.
:class:`ImageFetcher` puts three pieces together: the reference rules
(:mod:`labelstudio.references`: which file or URL a reference names), the SSRF-guarded client
(:mod:`labelstudio.guarded_http`: only public hosts, Label Studio's own and allow-listed ones,
every redirect hop checked) and the token exchange (:mod:`labelstudio.auth`: Label Studio's
credentials only ever go to Label Studio's origin).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

import httpx
import numpy as np
import numpy.typing as npt

from clipsam.images import ImageError, load_image
from labelstudio.auth import LabelStudioAuth
from labelstudio.errors import FetchError, too_large
from labelstudio.guarded_http import GuardedClient
from labelstudio.references import References
from labelstudio.settings import FetchSettings

logger = logging.getLogger(__name__)


class ImageFetcher:
    """Turns task-data image references into RGB arrays; thread-safe, one per service.

    ``api_key`` (``LABEL_STUDIO_API_KEY``) is passed apart from ``settings``, which carry
    nothing secret and may travel in job arguments.
    """

    def __init__(
        self,
        settings: FetchSettings,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._references = References(settings.label_studio_url, settings.local_files_root)
        self._http = GuardedClient(
            timeout=settings.fetch_timeout,
            max_bytes=settings.max_image_bytes,
            allowed_hosts=settings.allowed_hosts,
            trusted_origin=self._references.origin,
            transport=transport,
        )
        base = self._references.base
        refresh_url = f"{base}/api/token/refresh/" if base else None
        self._auth = LabelStudioAuth(api_key, refresh_url, self._http.http, settings.fetch_timeout)

    def fetch(self, reference: str, task_id: int | None = None) -> npt.NDArray[np.uint8]:
        """Return the referenced image as ``H×W×3 uint8`` RGB, EXIF orientation applied."""
        data = self.fetch_bytes(reference, task_id)
        try:
            return load_image(data, max_pixels=self._settings.max_image_pixels)
        except ImageError as exc:
            raise FetchError(f"image could not be decoded: {exc}", status=422) from exc

    def fetch_bytes(self, reference: str, task_id: int | None = None) -> bytes:
        """Return the raw bytes behind ``reference`` (at most ``max_image_bytes``)."""
        target = self._references.resolve(reference, task_id)
        if isinstance(target, Path):
            return self._read_local(target)
        return self._http.download(target, self._auth)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read_local(self, path: Path) -> bytes:
        limit = self._settings.max_image_bytes
        logger.debug("reading %s from LOCAL_FILES_DOCUMENT_ROOT", path)
        try:
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise FetchError(f"could not read local file: {exc.strerror}", status=500) from exc
        if len(data) > limit:
            raise too_large(limit)
        return data
