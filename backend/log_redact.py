"""Secrets never reach a log: query-string credentials are masked in uvicorn's access lines.

Label Studio webhooks may carry the webhook secret as ``?secret=...`` (the header
``X-Webhook-Secret`` is preferred, the query form is kept for existing webhooks); uvicorn's
access log prints the full path with its query string, so this filter masks the value of any
credential-like parameter before the line is formatted.
"""

from __future__ import annotations

import logging
import re

_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:secret|token|api_key|apikey|access_token|password)=)[^&\s\"']*"
)
ACCESS_LOGGER = "uvicorn.access"


def redact(text: str) -> str:
    return _SECRET_PARAM.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install(name: str = ACCESS_LOGGER) -> None:
    """Add the filter to uvicorn's access logger once (after uvicorn configured logging)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())
