"""Publishing the serving head to Redis: every backend process hears of a promotion at once.

The registry's files stay the truth; this is how the news travels. A promotion puts the head
file in Redis (for backends on machines without the registry's MODEL_DIR), then sets the
serving-head key and announces it on the promotions channel in one transaction
(names: :mod:`correction_loop.keys`). A Redis outage is logged, never raised: running backends
pick the change up when they next poll the registry.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from correction_loop import keys

if TYPE_CHECKING:
    import redis

    from correction_loop.head_files import HeadVersion

logger = logging.getLogger(__name__)


class HeadPublisher:
    """Announces promotions and rollbacks on ``redis`` (None: there is nobody to tell)."""

    def __init__(self, redis: redis.Redis | None, prefix: str = keys.PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix

    @property
    def serving_key(self) -> str:
        return keys.serving_head(self.prefix)

    @property
    def channel(self) -> str:
        return keys.head_promotions(self.prefix)

    def blob_key(self, version: str) -> str:
        return keys.head_blob(version, self.prefix)

    def share(self, head: HeadVersion) -> None:
        """Put the head file in Redis too, for backends on machines without this MODEL_DIR."""
        if self.redis is None:
            return
        try:
            self.redis.set(self.blob_key(head.version), head.path.read_bytes())
        except Exception:
            logger.exception("could not copy head %s to Redis; only this MODEL_DIR has it",
                             head.version)  # fmt: skip

    def publish(self, head: HeadVersion | None) -> None:
        """Tell every backend process; the files stay the truth if Redis is down."""
        if self.redis is None:
            return
        message = json.dumps(
            {"version": head.version, "path": str(head.path)}
            if head is not None
            else {"version": None, "path": None}
        )
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self.serving_key, message)
            pipe.publish(self.channel, message)
            pipe.execute()
        except Exception:
            logger.exception(
                "could not publish the serving head to Redis (%s); running backends pick it up "
                "when they next poll the registry", self.channel,
            )  # fmt: skip
