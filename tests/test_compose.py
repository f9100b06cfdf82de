"""docker-compose.yml, .env.example and the Dockerfile agree with each other and with the code.

No Docker engine here (no ``docker compose config``): the files are parsed and cross-checked,
and the backend's environment goes through the real ``Settings.from_env``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
#: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``...
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
SERVICES = ("label-studio", "redis", "backend", "worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_TEXT)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def interpolate(value: str) -> str:
    """What Compose makes of a value with no .env: every variable at its default."""
    return VARIABLE.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", value)


def env(service: dict) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping, so anchors can merge"
    return {k: interpolate(str(v)) for k, v in environment.items()}


def volumes(service: dict) -> dict[str, str]:
    """Mount target → source (named volume or host path), from the short syntax."""
    mounts = {}
    for spec in service.get("volumes", []):
        source, target, *_ = interpolate(spec).split(":")
        mounts[target] = source
    return mounts


def stages() -> dict[str, str]:
    """Dockerfile stage name → its text (``FROM ... AS name`` up to the next FROM)."""
    parts = re.split(r"(?im)^FROM\s+", DOCKERFILE)[1:]
    named = {}
    for part in parts:
        match = re.match(r"\S+\s+AS\s+(\S+)", part, re.IGNORECASE)
        assert match, f"every stage is named: FROM {part.splitlines()[0]}"
        named[match.group(1)] = part
    return named


def test_the_four_services_exist(services):
    assert set(SERVICES) <= set(services)
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert services["redis"]["image"].split(":")[0] == "redis"
    assert services["redis"]["image"].split(":")[1].startswith("7")


def test_backend_and_worker_share_redis_and_model_dir(compose, services):
    backend, worker = env(services["backend"]), env(services["worker"])
    assert backend["REDIS_URL"] == worker["REDIS_URL"]
    url = urlparse(backend["REDIS_URL"])
    assert url.scheme == "redis" and url.hostname in services and url.hostname == "redis"
    assert url.port == 6379
    assert backend["MODEL_DIR"] == worker["MODEL_DIR"] == "/data/model_dir"
    assert backend["CLIPSAM_HOME"] == worker["CLIPSAM_HOME"] == "/data/weights"
    for name in ("backend", "worker"):
        mounts = volumes(services[name])
        model_dir = mounts[backend["MODEL_DIR"]]
        assert model_dir in compose["volumes"], f"{name}: MODEL_DIR on a named volume"
        assert mounts[backend["CLIPSAM_HOME"]] in compose["volumes"]
    assert volumes(services["backend"]) == volumes(services["worker"])
    assert worker["LABEL_STUDIO_API_KEY"] == backend["LABEL_STUDIO_API_KEY"]  # fetches images


def test_named_volume_mount_points_exist_in_the_image(compose, services):
    """Docker gives a new named volume its mount point's owner: root, if the image lacks it."""
    for name in ("backend", "worker"):
        for target, source in volumes(services[name]).items():
            if source in compose["volumes"]:
                assert re.search(rf"mkdir -p [^\n]*{re.escape(target)}\b", DOCKERFILE), target


def test_redis_persists_with_append_only_fsync_every_second(compose, services):
    redis = services["redis"]
    command = redis["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[0] == "redis-server"
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--appendonly"] == "yes" and flags["--appendfsync"] == "everysec"
    assert volumes(redis)["/data"] in compose["volumes"]
    assert "ports" not in redis  # only the stack talks to it


def test_backend_reaches_label_studio_and_label_studio_may_reach_it(services):
    backend = env(services["backend"])
    url = urlparse(backend["LABEL_STUDIO_URL"])
    assert url.hostname == "label-studio" and url.hostname in services
    assert url.port == 8080
    assert backend["CLIPSAM_ALLOWED_HOSTS"] == "label-studio"
    studio = env(services["label-studio"])
    assert studio["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    root = studio["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    assert root in volumes(services["label-studio"])
    assert backend["LOCAL_FILES_DOCUMENT_ROOT"] == root and root in volumes(services["backend"])
    # Private-address backends: refused without these (see shared/docs/labelstudio.md).
    assert studio["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    assert studio["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
    assert volumes(services["label-studio"])["/label-studio/data"] == "label-studio-data"


def test_backend_environment_means_what_it_says_to_settings(services):
    """Names the backend does not read would be silently ignored: parse them for real."""
    settings = Settings.from_env(env(services["backend"]))
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.model_dir == Path("/data/model_dir")
    assert settings.label_studio_url == "http://label-studio:8080"
    assert settings.inprocess_worker is False  # retraining belongs to the worker service
    assert settings.allowed_hosts == ("label-studio",)
    assert settings.local_files_root == Path("/label-studio/files")
    assert settings.workers == 1 and settings.port == 9090
    for secret in ("LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
                   "CLIPSAM_WEBHOOK_SECRET"):  # fmt: skip
        assert secret in services["backend"]["environment"]
    assert "X-Webhook-Secret" in COMPOSE_TEXT  # the webhook auth wiring is explained


def test_depends_on_and_healthchecks_are_wired(services):
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    for name in ("backend", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    check = " ".join(services["backend"]["healthcheck"]["test"])
    assert "127.0.0.1:9090/health" in check
    assert "/health" in stages()["backend"] and "HEALTHCHECK" in stages()["backend"]


def test_build_targets_exist_and_share_a_base(services):
    named = stages()
    for name in ("backend", "worker"):
        build = services[name]["build"]
        assert build["target"] == name and name in named
        assert build["context"] == "."
        assert re.match(r"base\s", named[name], re.IGNORECASE), f"{name} builds on base"
    assert list(named)[-1] == "backend"  # a plain `docker build .` builds the backend
    assert "python -m training.worker" in " ".join(services["worker"]["command"])
    assert '"training.worker"' in named["worker"] and '"backend"]' in named["backend"]
    args = services["backend"]["build"]["args"]
    assert "ARG BASE_IMAGE=" + interpolate(args["BASE_IMAGE"]) in DOCKERFILE
    assert "ARG TORCH_INDEX=" + interpolate(args["TORCH_INDEX"]) in DOCKERFILE
    for variable in ("PORT=9090", "WORKERS=1", "THREADS=4"):
        assert variable in named["base"]


def test_gpu_reservation_is_offered_for_the_worker():
    worker = COMPOSE_TEXT.split("\n  worker:\n", 1)[1]
    assert re.search(r"#\s*deploy:", worker) and re.search(r"#\s*- driver: nvidia", worker)


def test_every_variable_is_listed_in_env_example():
    used = {m.group(1) for m in VARIABLE.finditer(COMPOSE_TEXT)}
    listed = set(re.findall(r"(?m)^([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE))
    assert used, "the compose file reads its settings from the environment"
    assert used - listed == set(), "add these to .env.example"
    assert listed - used == set(), "listed in .env.example but not used by docker-compose.yml"
    assert "$$" not in COMPOSE_TEXT


def test_ports(services):
    def published(service: dict) -> list[tuple[str, str, str]]:
        out = []
        for spec in service.get("ports", []):
            *host, container = interpolate(str(spec)).split(":")
            ip, port = (host[0], host[1]) if len(host) == 2 else ("0.0.0.0", host[0])
            out.append((ip, port, container))
        return out

    assert published(services["label-studio"]) == [("0.0.0.0", "8080", "8080")]
    assert published(services["backend"]) == [("127.0.0.1", "9090", "9090")]
    assert published(services["redis"]) == published(services["worker"]) == []
    assert "EXPOSE 9090" in stages()["backend"]
