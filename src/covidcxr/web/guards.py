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
#: Seconds a whole upload may take (``covidcxr serve --upload-timeout``): 20 MB at 3 Mbit/s.
DEFAULT_UPLOAD_TIMEOUT_S = 60.0
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
    """A place in the queue for ``POST /v1/predict`` once its whole body has arrived; 503 and ``Retry-After`` when full.

    An upload still arriving holds no place: clients that drip their bodies a byte a second do
    not stand between a complete upload and the models (:class:`UploadLimit` ends them at its
    deadline). A request that arrives while the queue is full is refused at once, before its body
    is read; one whose body completes while the queue is full is refused then.
    """

    def __init__(self, app: ASGIApp, queue: Queue, path: str = "/v1/predict") -> None:
        self.app, self.queue, self.path = app, queue, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        q = self.queue
        if q.admitted >= q.limit:
            await JSONResponse({"error": self.busy()}, status_code=503, headers=self.retry())(scope, receive, send)
            return
        admitted = False

        async def admit() -> Message:
            nonlocal admitted
            message = await receive()
            if not admitted and message["type"] == "http.request" and not message.get("more_body", False):
                if q.admitted >= q.limit:
                    raise HTTPException(503, self.busy(), headers=self.retry())
                q.admitted += 1
                admitted = True
            return message

        try:
            await self.app(scope, admit, send)
        finally:
            if admitted:
                q.admitted -= 1

    def busy(self) -> str:
        return f"the server is busy ({self.queue.admitted} requests queued); try again in {self.queue.retry_after()} s"

    def retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.queue.retry_after())}


class UploadLimit:
    """Refuse request bodies over ``max_body`` bytes before they are parsed: from Content-Length, else while reading.

    A body whose next part does not arrive within ``read_timeout`` seconds, or that is not
    complete ``upload_timeout`` seconds after the request began, is refused with 408: a
    half-sent upload does not hold its connection for ever, however slowly it drips.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        message: str,
        read_timeout: float = DEFAULT_READ_TIMEOUT_S,
        upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
    ) -> None:
        self.app, self.max_body, self.message = app, max_body, message
        self.read_timeout, self.upload_timeout = read_timeout, upload_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await JSONResponse({"error": self.message}, status_code=413)(scope, receive, send)
            return
        seen, complete = 0, False
        deadline = anyio.current_time() + self.upload_timeout

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # after the body only a disconnect can come, whenever it comes
                return await receive()
            left = deadline - anyio.current_time()
            try:
                with anyio.fail_after(max(min(self.read_timeout, left), 0)):
                    message = await receive()
            except TimeoutError:
                if left <= self.read_timeout:
                    raise HTTPException(
                        408,
                        f"the upload did not arrive within {self.upload_timeout:g} s; send it again over a faster "
                        "connection, or restart the server with a larger --upload-timeout",
                    ) from None
                raise HTTPException(408, f"the upload stalled for {self.read_timeout:g} s; send it again") from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > self.max_body:  # chunked upload, or a Content-Length that lied
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)
