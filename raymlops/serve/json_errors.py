"""Serve's own error answers as the app's JSON error bodies.

Everything our app answers is JSON, but a few answers never reach it: Serve's backpressure rejection ("Request
dropped due to backpressure", 503 + Retry-After) when ``max_queued_requests`` is exceeded, its request timeout (408),
an unknown route prefix (404) and a replica that raised (500) are plain text, written by Serve's proxy or by the
replica's own HTTP server (direct ingress, behind HAProxy). Clients that parse every error as JSON break on them.

Serve wraps both servers with the Starlette middlewares that ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` returns
(``raymlops.serve.ingress`` sets it to :func:`middlewares` in the env Serve starts with). :class:`JSONErrors` rewrites
a plain-text error (status >= 400, not JSON already) into ``{"error": {"code", "message", "details"}}`` and keeps its
status and headers (``Retry-After`` among them); any other response passes through untouched and unbuffered.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["JSONErrors", "error_body", "error_code", "middlewares"]

Scope = dict[str, Any]
Message = dict[str, Any]

# Serve's plain-text answers, by status; a 503 that is not backpressure is a replica or deployment not available.
_CODES = {408: "request_timeout", 404: "unknown_route", 413: "body_too_large", 429: "rate_limited",
          500: "internal_error", 502: "replica_unavailable", 503: "unavailable", 504: "replica_timeout"}


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON error body of every raymlops answer (the app's, Serve's rewritten ones, HAProxy's error file)."""
    return {"error": {"code": code, "message": message, "details": details or []}}


def error_code(status: int, text: str) -> str:
    """The JSON error code for one of Serve's plain-text answers."""
    if status == 503 and "backpressure" in text.lower():
        return "overloaded"
    return _CODES.get(status, "http_error")


class JSONErrors:
    """Pure ASGI middleware: plain-text error responses (status >= 400) become JSON error bodies."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        body = bytearray()

        async def wrapped(message: Message) -> None:
            nonlocal held
            kind = message.get("type")
            if kind == "http.response.start":
                if message.get("status", 200) >= 400 and not _is_json(message.get("headers", [])):
                    held = message  # rewrite once the whole (short) text body is here
                    return
                await send(message)
            elif kind == "http.response.body" and held is not None:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_json(send, held, bytes(body))
            else:
                await send(message)

        await self.app(scope, receive, wrapped)


def middlewares() -> list[Any]:
    """Serve's HTTP proxy callback: the middlewares its proxies and replicas' HTTP servers wrap their app with."""
    from starlette.middleware import Middleware

    return [Middleware(JSONErrors)]


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and b"json" in v.lower() for k, v in headers)


async def _send_json(send: Any, start: Message, text: bytes) -> None:
    status = int(start["status"])
    message = text.decode("utf-8", "replace").strip() or f"HTTP {status}"
    payload = json.dumps(error_body(error_code(status, message), message)).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
