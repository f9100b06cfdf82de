"""What fetching needs to know, and nothing secret: jobs carry it through Redis as it is.

The Label Studio API key is never a field here: each process passes its own
(``LABEL_STUDIO_API_KEY``, read by :func:`api_key_from_env`) to
:class:`~labelstudio.fetch.ImageFetcher` next to these settings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EnvReader:
    """Reads of environment variables shared by every settings class: blank means unset, and
    a bad number raises an error that names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def number(self, name: str, default: float, cast: type = int) -> Any:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            return cast(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class FetchSettings:
    #: Label Studio's base URL (``LABEL_STUDIO_URL``): /data/... references are joined to it,
    #: and only its origin ever receives the API key.
    label_studio_url: str | None = None
    #: Hosts or CIDRs that image URLs may point at even when private (``CLIPSAM_ALLOWED_HOSTS``).
    allowed_hosts: tuple[str, ...] = ()
    #: ``LOCAL_FILES_DOCUMENT_ROOT``: /data/local-files/?d=... references are read from here.
    local_files_root: Path | None = None
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    fetch_timeout: float = 20.0
    #: Images fetched at once (``THREADS``).
    threads: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FetchSettings:
        env = os.environ if env is None else env

        reader = EnvReader(env)
        text, number = reader.text, reader.number

        root = text("LOCAL_FILES_DOCUMENT_ROOT")
        hosts = (text("CLIPSAM_ALLOWED_HOSTS") or "").split(",")
        return cls(
            label_studio_url=(text("LABEL_STUDIO_URL") or "").rstrip("/") or None,
            allowed_hosts=tuple(h.strip() for h in hosts if h.strip()),
            local_files_root=Path(root) if root else None,
            max_image_bytes=number("CLIPSAM_MAX_IMAGE_BYTES", cls.max_image_bytes),
            max_image_pixels=number("CLIPSAM_MAX_IMAGE_PIXELS", cls.max_image_pixels),
            fetch_timeout=number("CLIPSAM_FETCH_TIMEOUT", cls.fetch_timeout, float),
            threads=number("THREADS", cls.threads),
        )

    def to_job(self) -> dict[str, Any]:
        """Plain JSON values, for job arguments (rq keeps them in Redis: nothing secret here)."""
        values = dataclasses.asdict(self)
        values["allowed_hosts"] = list(self.allowed_hosts)
        values["local_files_root"] = str(self.local_files_root) if self.local_files_root else None
        return values

    @classmethod
    def from_job(
        cls, values: Mapping[str, Any], base: FetchSettings | None = None
    ) -> FetchSettings:
        """``base`` (default: the defaults) with what a job carried on top; other keys (jobs
        queued by older versions carried every non-secret backend setting) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        clean = {k: v for k, v in values.items() if k in names and v is not None}
        if "allowed_hosts" in clean:
            clean["allowed_hosts"] = tuple(clean["allowed_hosts"])
        if "local_files_root" in clean:
            clean["local_files_root"] = Path(clean["local_files_root"])
        return dataclasses.replace(base or cls(), **clean)


def api_key_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``LABEL_STUDIO_API_KEY`` (a legacy token or a personal access token), or None."""
    env = os.environ if env is None else env
    return env.get("LABEL_STUDIO_API_KEY", "").strip() or None
