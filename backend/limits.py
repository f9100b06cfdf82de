"""Request limits enforced on what arrives, not on what the headers claim.

A pure ASGI middleware in front of the app: the URL and the header block are measured, and the
body is counted as it streams in (``Content-Length`` or chunked alike) and refused with 413 the
moment it passes the limit, before the app reads any of it. Under the limit the body is handed
to the app as it came.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Headers beyond this count are refused like an oversized header block.
MAX_HEADERS = 100


class RequestLimits:
    def __init__(
        self, app: ASGIApp, max_body: int, max_header_bytes: int, max_url_bytes: int
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.max_url_bytes = max_url_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check_head(scope)
        if refusal is not None:
            await _refuse(send, *refusal)
            return
        chunks: list[bytes] = []
        total = 0
        first: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                first = message
                break
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_body:
                await _refuse(send, 413, f"request body over {self.max_body} bytes")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        pending: list[Message] = [
            first or {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        ]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    def _check_head(self, scope: Scope) -> tuple[int, str] | None:
        url = len(scope.get("raw_path") or scope["path"].encode()) + len(
            scope.get("query_string", b"")
        )
        if url > self.max_url_bytes:
            return 414, f"URL over {self.max_url_bytes} bytes"
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        size = sum(len(k) + len(v) + 4 for k, v in headers)
        if len(headers) > MAX_HEADERS or size > self.max_header_bytes:
            return 431, f"request headers over {self.max_header_bytes} bytes or {MAX_HEADERS}"
        for key, value in headers:
            if key == b"content-length":
                declared = value.strip()
                if not declared.isdigit():
                    return 400, "invalid Content-Length"
                if int(declared) > self.max_body:
                    return 413, f"request body over {self.max_body} bytes"
        return None


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of an oversized body is not read
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
