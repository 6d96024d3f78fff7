"""Admission, outermost first: security headers, Host and Origin, the queue, the upload's size and pace (see :mod:`covidcxr.web.app`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from urllib.parse import urlsplit

import anyio
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_READ_TIMEOUT_S = 20.0
#: Host names answered by default: the loopback ones (``covidcxr serve --allowed-host`` adds more).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Headers on every answer: no MIME sniffing, no framing by other sites, nothing loaded from elsewhere.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
}


class SecurityHeaders:
    """Add :data:`SECURITY_HEADERS` to every answer that does not set them itself (``/docs`` sets its own CSP)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *((k, v) for k, v in extra if k not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host_name(netloc: str) -> str:
    """``"Example.org:8000"`` -> ``"example.org"``, ``"[::1]:8000"`` -> ``"::1"``."""
    try:
        return (urlsplit(f"//{netloc}").hostname or "").lower()
    except ValueError:  # a malformed port or bracket
        return ""


class HostCheck:
    """Answer only requests for an allowed host, and only from the server's own origin when a browser says where it comes from.

    The ``Host`` check stops DNS rebinding (a page of evil.example whose name resolves to
    127.0.0.1). The ``Origin`` check stops cross-site requests: a browser names the page's
    origin on every cross-origin POST, and it must then equal the ``Host`` the request was sent
    to. Requests without ``Origin`` (curl, scripts, same-origin GETs) pass.

    Args:
        app: the ASGI app.
        allowed_hosts: host names, without port; ``"*"`` allows any.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed = {h.strip("[]").lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self.any_host and _host_name(host) not in self.allowed:
            message = (
                f"this server does not answer to the host name {_host_name(host) or host!r}; open it as http://localhost:PORT/, "
                f"or restart it with --allowed-host NAME"
            )
            await JSONResponse({"error": message}, status_code=400)(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            message = (
                f"requests from web pages of another origin ({origin}) are refused; use this server's own page, or curl"
            )
            await JSONResponse({"error": message}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Queue:
    """Requests admitted to ``POST /v1/predict`` and the recent time per reading, for 503 and Retry-After.

    Only the event loop's thread touches ``admitted``; ``seconds`` is written by the model thread.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.admitted, self.seconds = limit, 0, 0.5

    def retry_after(self) -> int:
        return max(1, math.ceil(self.admitted * self.seconds))


class Admission:
    """503 with ``Retry-After`` for ``POST /v1/predict`` while ``queue.limit`` requests are admitted, before the body is read."""

    def __init__(self, app: ASGIApp, queue: Queue, path: str = "/v1/predict") -> None:
        self.app, self.queue, self.path = app, queue, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        q = self.queue
        if q.admitted >= q.limit:
            message = f"the server is busy ({q.admitted} requests queued); try again in {q.retry_after()} s"
            await JSONResponse({"error": message}, status_code=503, headers={"Retry-After": str(q.retry_after())})(
                scope, receive, send
            )
            return
        q.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            q.admitted -= 1


class UploadLimit:
    """Refuse request bodies over ``max_body`` bytes before they are parsed: from Content-Length, else while reading.

    A body whose next part does not arrive within ``read_timeout`` seconds is refused with 408,
    so a half-sent upload does not hold its place for ever.
    """

    def __init__(self, app: ASGIApp, max_body: int, message: str, read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> None:
        self.app, self.max_body, self.message, self.read_timeout = app, max_body, message, read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await JSONResponse({"error": self.message}, status_code=413)(scope, receive, send)
            return
        seen, complete = 0, False

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # after the body only a disconnect can come, whenever it comes
                return await receive()
            try:
                with anyio.fail_after(self.read_timeout):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"the upload stalled for {self.read_timeout:g} s; send it again") from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > self.max_body:  # chunked upload, or a Content-Length that lied
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)
