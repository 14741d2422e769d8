"""The server's outermost layer: API key, request body size, and a count of every answer."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import CLIENT_CLOSED, ServeMetrics, endpoint_label
from .protocol import error_response


class Guard:
    """ASGI middleware in front of every route: API key, body size, and a count of every answer.

    Written against raw ASGI, not ``@app.middleware("http")``: the body limit is enforced on the
    bytes actually received (a chunked body has no Content-Length to trust), the body is handed to
    the app from memory, and the app still sees the client's disconnect after it.
    """

    def __init__(self, app: ASGIApp, *, api_key: str, max_body_bytes: int, metrics: ServeMetrics) -> None:
        self.app, self.api_key, self.max_body_bytes, self.metrics = app, api_key, max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info: dict[str, Any] = {"counted": False, "status": None}
        scope["forgetless"] = info

        async def send_(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_, info)
        finally:
            # Every answer is counted once: routes count their own (with the route taken), the rest here.
            if not info["counted"] and info["status"] is not None:
                self.metrics.requests.labels(endpoint_label(scope["path"]), "none", str(info["status"])).inc()

    async def _handle(self, scope: Scope, receive: Receive, send: Send, info: dict[str, Any]) -> None:
        headers = Headers(scope=scope)
        if scope["path"] != "/health":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                await error_response(401, "missing or invalid API key (Authorization: Bearer <key>)", code="invalid_api_key")(scope, receive, send)
                return
        limit = self.max_body_bytes
        too_large = error_response(413, f"request body over {limit} bytes", code="request_too_large")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                info["status"] = int(CLIENT_CLOSED)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                # Read (and drop) a bounded amount more, so a client still sending gets to read the
                # 413 instead of a reset connection; never more than a few times the limit.
                while more and size <= 4 * limit:
                    message = await receive()
                    size += len(message.get("body", b""))
                    more = message.get("more_body", False) and message["type"] == "http.request"
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def receive_() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, receive_, send)
