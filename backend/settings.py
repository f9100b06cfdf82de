"""Service settings, read from the environment once, at start-up.

Names follow label-studio-ml 2.x (``LABEL_STUDIO_URL``, ``BASIC_AUTH_USER``, ``MODEL_DIR``,
``PORT``...) so existing deployments carry over; ClipSAM's own knobs start with ``CLIPSAM_``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from clipsam.config import overrides_from_json
from clipsam.weights import WeightPaths
from labelstudio.settings import EnvReader, FetchSettings


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9090
    workers: int = 1
    threads: int = 4
    log_level: str = "INFO"
    model_dir: Path = Path("model_dir")
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    #: Lets Label Studio's auto-created webhook in without basic-auth credentials.
    webhook_secret: str | None = None
    preset: str = "fast"
    device: str = "auto"
    #: The head file to serve (``CLIPSAM_HEAD``); the training-free head when unset.
    head_path: Path | None = None
    #: Where the weights are (``CLIPSAM_HOME``, ``CLIPSAM_CLIP_WEIGHTS``,
    #: ``CLIPSAM_SAM_CHECKPOINT``, ``CLIPSAM_HEAD``, ``CLIPSAM_OFFLINE``), read with the rest;
    #: ``None`` (settings built in code) lets ``load_pipeline`` read them itself.
    weight_paths: WeightPaths | None = None
    #: Pipeline config overrides by field name, from ``CLIPSAM_CONFIG`` (JSON object),
    #: e.g. ``{"tau": 0.4, "top_k": 4}``.
    pipeline_overrides: dict[str, Any] = field(default_factory=dict)
    default_category: str | None = None
    category_key: str = "category"
    #: The config label that means "defect"; the first label of each control when unset.
    defect_label: str | None = None
    verdict_threshold: float = 0.5
    local_files_root: Path | None = None
    #: Hosts or CIDRs that image URLs may point at even when private (comma-separated).
    allowed_hosts: tuple[str, ...] = ()
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    fetch_timeout: float = 20.0
    max_request_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_url_bytes: int = 8 * 1024
    #: /predict requests run at once (0: ``threads``) and waiting beyond them; more get 503.
    predict_concurrency: int = 0
    predict_queue: int = 16
    #: Per-client /predict rate limit: requests per minute (0: off) and burst size.
    predict_rate: float = 600.0
    predict_burst: int = 60
    #: How long /predict waits for a model that is still loading before answering 503.
    model_wait_seconds: float = 60.0
    #: Corrections loop: Redis (``REDIS_URL``; an embedded server under MODEL_DIR when unset).
    redis_url: str | None = None
    corrections: bool = True
    retrain_every: int = 20
    retrain_interval: float = 0.0
    retrain_heartbeat: float = 30.0
    retrain_epochs: int = 10
    retrain_holdout: float = 0.2
    #: Early stopping of retrains: epochs without a higher held-out AUROC (0: every epoch runs).
    retrain_patience: int = 3
    #: Epochs a retrain warm-started from a trained serving head takes at most (no step floor).
    retrain_warm_epochs: int = 10
    #: Serve the first epoch that passes the gate while the retrain goes on (the best one later).
    retrain_promote_early: bool = True
    #: Extra labelled datasets mixed into every retrain (``mvtec:PATH,visa:PATH``).
    base_data: tuple[str, ...] = ()
    #: Run retraining jobs inside this process (default: only with the embedded Redis).
    inprocess_worker: bool | None = None
    reload_poll: float = 5.0
    #: Few-shot normal memory per category: reference images (0: off) and patches kept.
    fewshot_images: int = 32
    fewshot_patches: int = 4096

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def fetch(self) -> FetchSettings:
        """What fetching images needs (no secrets: the API key is passed on its own)."""
        return FetchSettings(
            label_studio_url=self.label_studio_url,
            allowed_hosts=self.allowed_hosts,
            local_files_root=self.local_files_root,
            max_image_bytes=self.max_image_bytes,
            max_image_pixels=self.max_image_pixels,
            fetch_timeout=self.fetch_timeout,
            threads=self.threads,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        reader = EnvReader(env)
        text, number = reader.text, reader.number

        def items(name: str) -> tuple[str, ...]:
            return tuple(i.strip() for i in (text(name) or "").split(",") if i.strip())

        fetch = FetchSettings.from_env(env)  # the variables fetching shares
        return cls(
            host=text("HOST") or cls.host,
            port=number("PORT", cls.port),
            workers=number("WORKERS", cls.workers),
            threads=fetch.threads,
            log_level=(text("LOG_LEVEL") or cls.log_level).upper(),
            model_dir=Path(text("MODEL_DIR") or cls.model_dir),
            label_studio_url=fetch.label_studio_url,
            label_studio_api_key=text("LABEL_STUDIO_API_KEY"),
            basic_auth_user=text("BASIC_AUTH_USER"),
            basic_auth_pass=text("BASIC_AUTH_PASS"),
            webhook_secret=text("CLIPSAM_WEBHOOK_SECRET"),
            preset=text("CLIPSAM_PRESET") or cls.preset,
            device=text("CLIPSAM_DEVICE") or cls.device,
            head_path=Path(head) if (head := text("CLIPSAM_HEAD")) else None,
            weight_paths=WeightPaths.from_env(dict(env)),
            pipeline_overrides=_overrides(text("CLIPSAM_CONFIG")),
            default_category=text("CLIPSAM_DEFAULT_CATEGORY"),
            category_key=text("CLIPSAM_CATEGORY_KEY") or cls.category_key,
            defect_label=text("CLIPSAM_DEFECT_LABEL"),
            verdict_threshold=number("CLIPSAM_VERDICT_THRESHOLD", cls.verdict_threshold, float),
            local_files_root=fetch.local_files_root,
            allowed_hosts=fetch.allowed_hosts,
            max_image_bytes=fetch.max_image_bytes,
            max_image_pixels=fetch.max_image_pixels,
            fetch_timeout=fetch.fetch_timeout,
            max_request_bytes=number("CLIPSAM_MAX_REQUEST_BYTES", cls.max_request_bytes),
            max_header_bytes=number("CLIPSAM_MAX_HEADER_BYTES", cls.max_header_bytes),
            max_url_bytes=number("CLIPSAM_MAX_URL_BYTES", cls.max_url_bytes),
            predict_concurrency=number("CLIPSAM_PREDICT_CONCURRENCY", cls.predict_concurrency),
            predict_queue=number("CLIPSAM_PREDICT_QUEUE", cls.predict_queue),
            predict_rate=number("CLIPSAM_PREDICT_RATE", cls.predict_rate, float),
            predict_burst=number("CLIPSAM_PREDICT_BURST", cls.predict_burst),
            model_wait_seconds=number("CLIPSAM_MODEL_WAIT_SECONDS", cls.model_wait_seconds, float),
            redis_url=text("REDIS_URL"),
            corrections=_flag(text("CLIPSAM_CORRECTIONS"), True),
            retrain_every=number("CLIPSAM_RETRAIN_EVERY", cls.retrain_every),
            retrain_interval=number("CLIPSAM_RETRAIN_INTERVAL", cls.retrain_interval, float),
            retrain_heartbeat=number("CLIPSAM_RETRAIN_HEARTBEAT", cls.retrain_heartbeat, float),
            retrain_epochs=number("CLIPSAM_RETRAIN_EPOCHS", cls.retrain_epochs),
            retrain_holdout=number("CLIPSAM_RETRAIN_HOLDOUT", cls.retrain_holdout, float),
            retrain_patience=number("CLIPSAM_RETRAIN_PATIENCE", cls.retrain_patience),
            retrain_warm_epochs=number("CLIPSAM_RETRAIN_WARM_EPOCHS", cls.retrain_warm_epochs),
            retrain_promote_early=_flag(text("CLIPSAM_RETRAIN_PROMOTE_EARLY"), True),
            base_data=items("CLIPSAM_BASE_DATA"),
            inprocess_worker=_flag(text("CLIPSAM_INPROCESS_WORKER"), None),
            reload_poll=number("CLIPSAM_RELOAD_POLL", cls.reload_poll, float),
            fewshot_images=number("CLIPSAM_FEWSHOT_IMAGES", cls.fewshot_images),
            fewshot_patches=number("CLIPSAM_FEWSHOT_PATCHES", cls.fewshot_patches),
        )


def _overrides(raw: str | None) -> dict[str, Any]:
    return {} if raw is None else overrides_from_json(raw, "CLIPSAM_CONFIG")


@overload
def _flag(raw: str | None, default: bool) -> bool: ...
@overload
def _flag(raw: str | None, default: None) -> bool | None: ...
def _flag(raw: str | None, default: bool | None) -> bool | None:
    if raw is None:
        return default
    return raw.lower() in ("1", "true", "yes", "on")
