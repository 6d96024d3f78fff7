"""The FastAPI app: ``GET /health``, ``POST /v1/predict`` and the web page at ``GET /``.

``POST /v1/predict`` answers with the same object as one ``predictions.jsonl`` row of
``covidcxr predict``; the three PNGs it would write (lung mask, heat map, report) come
inline as base64. For the page it adds the image as read (grey PNG, longer side at most
:data:`DISPLAY_SIDE`) and transparent overlays at that size (lung outline, heat map,
lesions, Brixia zones), and ``saliency_method``, what the heat map shows. A gate refusal
ends with :data:`WEB_OVERRIDE` instead of the command line's ``--no-gate`` hint. Every refusal is ``{"error": "..."}``: 413 for an upload or an image over
the limits, 422 for a missing or repeated field, an unreadable file (the CLI's reader and its
refusals) or an image the gate refuses, 503 (with ``Retry-After``) when the queue is full.

Admission, outermost first:

- **Host and Origin.** Only requests whose ``Host`` header names an allowed host (default: the
  loopback names) are answered (400 otherwise), so a DNS-rebinding page cannot reach a local
  server; a request with an ``Origin`` header must come from the server's own origin (403
  otherwise). Browsers send ``Origin`` with every cross-site POST, also the multipart form
  posts that need no CORS preflight, so a web page elsewhere cannot drive the models; curl and
  scripts send none and are not affected.
- **Queue.** At most ``max_queue`` requests wait for the models, one more is being read; the
  next get 503 with ``Retry-After`` before their body is read.
- **Upload size and pace.** Bodies over the limit get 413; a body that stalls for
  ``read_timeout`` seconds gets 408.
- **Image size.** The pixel count is read from the header and checked against ``max_pixels``
  (default :data:`covidcxr.io.SERVE_MAX_PIXELS`, well below the command line's) before any
  pixel is decoded (413).

Decoding, the models and the PNGs run in one dedicated thread (the models are not
re-entrant, and two cores gain nothing from more), so one upload at a time is decoded and
held in memory; waiting requests hold only their spooled upload. The endpoint is async:
finished answers are serialised on the event loop and leave at once instead of queueing
behind predictions in the thread pool. Every answer carries ``X-Content-Type-Options``,
``X-Frame-Options`` and ``Content-Security-Policy``; nothing is loaded from another origin,
the API docs at ``/docs`` included (Swagger UI is served from the ``swagger-ui-bundle`` package). uvicorn's own limits (``covidcxr serve
--limit-concurrency``, ``--timeout-keep-alive``) bound open connections; uvicorn has no
timeout for incomplete request headers, so a server reachable from untrusted networks belongs
behind a reverse proxy. The PNGs of a reading are written to a temporary folder named after the
server's process id, removed after the answer; folders left by a server killed mid-request
are removed by the next one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path
from typing import Annotated, BinaryIO, Literal
from urllib.parse import urlsplit

import anyio
import numpy as np
import swagger_ui_bundle
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..batch import trim_heap
from ..gate import OVERRIDE
from ..infer import Predictor, Result
from ..io import (
    SERVE_MAX_PIXELS,
    ImageReadError,
    ImageTooLargeError,
    heatmap_png,
    mask_png,
    png_bytes,
    read_image,
    rgb_png,
)
from ..predict import write_report

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_QUEUE = 32
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
#: The /docs page: Swagger UI from this server only; its one inline script is allowed by its hash, its
#: inline styles (set by Swagger UI's React components) by 'unsafe-inline'. No other origin at all.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' {script_hash}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Where Swagger UI's files are served (from the swagger-ui-bundle package).
SWAGGER_PATH = "/static/swagger"
#: How to read a refused image anyway, said to a user of the page or the API (the gate says :data:`covidcxr.gate.OVERRIDE`).
WEB_OVERRIDE = (
    "this server reads frontal chest X-rays only (PA or AP); upload one, "
    "or restart it as covidcxr serve --no-gate to read anyway (research use)"
)
#: Longer side of the image and overlays the page draws, at most.
DISPLAY_SIDE = 1024
#: Overlay colours (RGB): lung outline cyan, lesions ground-glass yellow and consolidation red, zone borders white.
LUNG_COLOR = (0, 229, 255)
LESION_COLORS = ((255, 200, 0), (230, 30, 30))
ZONE_COLOR = (255, 255, 255)
#: Heat map: values below this are not drawn; opacity grows with the value up to HEAT_ALPHA at 1.
HEAT_MIN = 0.15
HEAT_ALPHA = 0.75
LESION_ALPHA = 0.55
#: Room for the multipart boundary and part headers on top of the file itself.
_MULTIPART_OVERHEAD = 64 * 1024


# ---------------------------------------------------------------------------
# Response models: they document /openapi.json and check every answer.


class Error(BaseModel):
    error: str = Field(description="What was wrong with the request, and how to fix it; one sentence.")


class ModelInfo(BaseModel):
    name: str
    sha256: str


class Health(BaseModel):
    status: Literal["ok"]
    models: dict[str, ModelInfo] = Field(
        description="Name and sha256 of each weight file loaded (lungs, diagnosis, gate, lesions, severity)."
    )


class PNG(BaseModel):
    png_base64: str = Field(description="A PNG file, base64-encoded.")


class Brixia(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    A: float
    B: float
    C: float
    D: float
    E: float
    F: float
    global_: float = Field(alias="global", description="Sum of the six zones, 0-18.")


class LungShares(BaseModel):
    right_lung: float
    left_lung: float


class Severity(BaseModel):
    geographic_extent: float = Field(description="0-8 (both lungs, 0-4 each).")
    opacity: float = Field(description="0-6 (both lungs, 0-3 each).")
    brixia: Brixia = Field(
        description="Brixia score per zone, 0-3: A-C the patient's right lung top to bottom, D-F the left lung."
    )
    lesions: dict[str, LungShares] = Field(
        description="Share of each lung covered by each lesion type (ground-glass, consolidation)."
    )


class AirspaceOpacity(BaseModel):
    present: bool = Field(description="probability at or above 0.5")
    probability: float = Field(description="P(pneumonia of any kind) = 1 - P(No finding).")


class CovidPattern(BaseModel):
    score: float = Field(description="P(COVID-19 | pneumonia) = P(COVID-19) / (P(COVID-19) + P(Other pneumonia)).")
    bilateral: float = Field(description="Lesion share of the less affected lung.")
    peripheral: float = Field(description="Share of lesion pixels in the lateral half of each lung.")
    lower_zone: float = Field(description="Share of lesion pixels in the lower thirds (zones C, F).")


class Findings(BaseModel):
    airspace_opacity: AirspaceOpacity
    geographic_extent: float = Field(description="0-8, from the severity scorer.")
    opacity: float = Field(description="0-6, from the severity scorer.")
    lesion_share: float = Field(description="Share of the lungs with any lesion.")
    covid_pattern: CovidPattern


class Overlays(BaseModel):
    lungs: PNG = Field(description="Lung outline in cyan (0, 229, 255), transparent elsewhere.")
    heatmap: PNG | None = Field(
        description="The heat map in the jet colour map, opacity growing with the value, transparent below 0.15; null without saliency."
    )
    lesions: PNG | None = Field(
        description="Ground-glass opacity in yellow (255, 200, 0), consolidation in red (230, 30, 30); null without the severity models."
    )
    zones: PNG | None = Field(
        description="Borders of the Brixia zones A-F inside the lungs, white; null without the severity models."
    )


class Prediction(BaseModel):
    path: str = Field(description="The uploaded file's name.")
    probabilities: dict[str, float] = Field(
        description="COVID-19, Other pneumonia, No finding: calibrated, summing to 1."
    )
    prediction: str
    uncertain: bool | None = Field(
        default=None,
        description="True when the reading is unsure by the rule of docs/experiments/uncertainty.md; null when the model has no such rule.",
    )
    uncertain_reason: str | None = Field(default=None, description="Why the reading is uncertain, in words; else null.")
    lung_mask: PNG = Field(description="0/255 lung mask at the input's pixel size.")
    heatmap: PNG | None = Field(
        description="Grad-CAM of the predicted class; null when the server runs with --no-saliency."
    )
    report: PNG | None = Field(
        description="The report: X-ray with lung outline, heat map, lesions and zones, probabilities."
    )
    image: PNG = Field(
        description=f"The image as read, grey, its longer side shrunk to at most {DISPLAY_SIDE} px: what the overlays are drawn on."
    )
    overlays: Overlays = Field(description="Transparent RGBA PNGs at the size of `image`, to stack over it.")
    model: dict[str, ModelInfo]
    warnings: list[str]
    lung_area: float
    gate_probability: float
    saliency_method: str | None = Field(default=None, description="What the heat map shows, e.g. Grad-CAM.")
    saliency_in_lungs: float | None = None
    findings: Findings | None = Field(
        default=None, description="What the diagnosis rests on (source-blind diagnosis models only)."
    )
    severity: Severity | None = None


_ERRORS = {
    400: {
        "model": Error,
        "description": "The body is not valid multipart/form-data, or the Host header names a host this server does not answer to.",
    },
    403: {"model": Error, "description": "Sent by a web page of another origin (the Origin header)."},
    408: {"model": Error, "description": "The upload stalled for longer than the server's read timeout."},
    413: {"model": Error, "description": "The upload, or the image's pixel count, is larger than the server's limit."},
    422: {
        "model": Error,
        "description": "No file, several files, an unreadable file, or an image refused as not a frontal chest X-ray.",
    },
    503: {"model": Error, "description": "The queue is full; try again after Retry-After seconds."},
}


# ---------------------------------------------------------------------------
# Plumbing: the upload limit and the {"error": ...} shape for every refusal.


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


class _Queue:
    """Requests admitted to ``POST /v1/predict`` and the recent time per reading, for 503 and Retry-After.

    Only the event loop's thread touches ``admitted``; ``seconds`` is written by the model thread.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.admitted, self.seconds = limit, 0, 0.5

    def retry_after(self) -> int:
        return max(1, math.ceil(self.admitted * self.seconds))


class Admission:
    """503 with ``Retry-After`` for ``POST /v1/predict`` while ``queue.limit`` requests are admitted, before the body is read."""

    def __init__(self, app: ASGIApp, queue: _Queue, path: str = "/v1/predict") -> None:
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


def _validation_message(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())[1:]) or "body"
        if field == "file":
            what = (
                "no file uploaded"
                if err.get("type") == "missing"
                else "the field 'file' holds text, not a file with a name"
            )
            return f"{what}: send the X-ray as multipart/form-data in the field 'file' (curl -F file=@scan.png URL/v1/predict)"
        problems.append(f"{field}: {err.get('msg', 'invalid')}")
    return "invalid request (" + "; ".join(problems) + "); send the X-ray as multipart/form-data in the field 'file'"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail
        if exc.status_code == 404:
            message = f"no such page: {request.url.path}; the API is GET /health and POST /v1/predict (see /docs)"
        elif exc.status_code == 400:
            message = (
                f"malformed request body ({exc.detail}); send the X-ray as multipart/form-data in the field 'file'"
            )
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": str(message)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        # Answered outside the other middleware: the security headers are added here.
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); the server log has the details"},
            status_code=500,
            headers=SECURITY_HEADERS,
        )


# ---------------------------------------------------------------------------
# The app


def _png(data: bytes) -> dict:
    return {"png_base64": base64.b64encode(data).decode("ascii")}


def web_message(error: str) -> str:
    """A refusal worded for a user of the page or the API: the command line's ``--no-gate`` hint replaced."""
    return error.replace(OVERRIDE, WEB_OVERRIDE)


def _resized(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """``array`` (H, W) stretched to ``size`` (width, height): bool and uint8 as uint8, floats as float32."""
    if array.shape == (size[1], size[0]):
        return array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    img = Image.fromarray(array if array.dtype == np.uint8 else np.asarray(array, np.float32))
    return np.asarray(img.resize(size, resample))


def _edges(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def _rgba(shape: tuple[int, int]) -> np.ndarray:
    return np.zeros((*shape, 4), np.uint8)


def overlays(result: Result, size: tuple[int, int]) -> dict[str, np.ndarray | None]:
    """The page's layers of a reading, RGBA (h, w, 4) uint8 at ``size`` (width, height): None where there is nothing to draw.

    The lung mask and the heat map are at the image's size; lesions and zones on the lung
    model's grid, stretched to the image (nearest neighbour), as the report draws them.
    """
    shape = (size[1], size[0])
    line = max(1, max(size) // 400)  # about 2 px on a 1024-px image
    out: dict[str, np.ndarray | None] = {"lungs": _rgba(shape), "heatmap": None, "lesions": None, "zones": None}
    lungs = _resized(result.lung_mask, size, Image.Resampling.NEAREST) > 0
    out["lungs"][_edges(lungs, line)] = (*LUNG_COLOR, 255)
    if result.heatmap is not None:
        from matplotlib import colormaps

        heat = np.clip(_resized(result.heatmap, size, Image.Resampling.BILINEAR), 0, 1)
        rgba = colormaps["jet"](heat, bytes=True)
        rgba[..., 3] = np.where(heat < HEAT_MIN, 0, np.round(heat * HEAT_ALPHA * 255)).astype(np.uint8)
        out["heatmap"] = rgba
    if result.lesions is not None:
        rgba = _rgba(shape)
        for k, lesion in enumerate(result.lesions):  # later classes (consolidation) drawn over earlier ones
            rgba[_resized(lesion, size, Image.Resampling.NEAREST) > 0] = (
                *LESION_COLORS[k % len(LESION_COLORS)],
                round(LESION_ALPHA * 255),
            )
        out["lesions"] = rgba
    if result.zones is not None:
        from scipy import ndimage

        z = _resized(np.asarray(result.zones, np.uint8), size, Image.Resampling.NEAREST)
        border = np.zeros(shape, bool)  # borders between two zones, inside the lungs
        border[1:] |= (z[1:] != z[:-1]) & (z[1:] > 0) & (z[:-1] > 0)
        border[:, 1:] |= (z[:, 1:] != z[:, :-1]) & (z[:, 1:] > 0) & (z[:, :-1] > 0)
        if line > 1:
            border = ndimage.binary_dilation(border, iterations=line // 2)
        rgba = _rgba(shape)
        rgba[border] = (*ZONE_COLOR, 255)
        out["zones"] = rgba
    return out


def display_pngs(result: Result, image: np.ndarray) -> dict:
    """``image`` (the grey X-ray as read, shrunk to :data:`DISPLAY_SIDE`) and ``overlays`` at its size, inline."""
    grey = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    png = png_bytes(rgb_png, grey, max_side=DISPLAY_SIDE)
    with Image.open(BytesIO(png)) as shown:  # the header only: the size rgb_png shrank it to
        size = shown.size
    layers = overlays(result, size)
    return {
        "image": _png(png),
        "overlays": {
            k: None if v is None else _png(png_bytes(rgb_png, v, max_side=DISPLAY_SIDE)) for k, v in layers.items()
        },
    }


def _add_docs(app: FastAPI) -> None:
    """``GET /docs`` and Swagger UI's files under :data:`SWAGGER_PATH` (mounted before ``/static``, which would hide them)."""
    app.mount(SWAGGER_PATH, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return docs_page(f"{root}{app.openapi_url}", f"{app.title} API", root)


def answer(result: Result, image: np.ndarray) -> dict:
    """The answer to ``POST /v1/predict`` for a reading: its ``predictions.jsonl`` row, the PNGs inline, the page's layers.

    The PNGs are built in memory: nothing of an upload touches the disk.
    """
    files = {
        "lung_mask": _png(png_bytes(mask_png, result.lung_mask)),
        "heatmap": None if result.heatmap is None else _png(png_bytes(heatmap_png, result.heatmap)),
        "report": _png(png_bytes(write_report, result, image)),
    }
    row = result.to_dict(files) | display_pngs(result, image)
    row["saliency_method"] = result.saliency_method
    return row


def docs_page(openapi_url: str, title: str, root: str = "") -> HTMLResponse:
    """Swagger UI on this server's own copy of its files, with a CSP that allows its inline script by hash."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{root}{SWAGGER_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{SWAGGER_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{SWAGGER_PATH}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # the validator badge would call validator.swagger.io
    )
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode("ascii") + "'"
        for script in re.findall(r"<script>(.*?)</script>", page.body.decode(), flags=re.DOTALL)
    )
    page.headers["content-security-policy"] = _DOCS_CSP.format(script_hash=hashes)
    return page


def create_app(
    pipeline: Predictor | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    use_gate: bool = True,
    saliency: bool = True,
    severity: bool = True,
    backend: str = "torch",
    onnx_dir: str | None = None,
    *,
    max_pixels: int = SERVE_MAX_PIXELS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
) -> FastAPI:
    """Build the app around one pipeline, loaded here once (or injected, as the tests do).

    Args:
        pipeline: The models to serve; ``None`` loads the shipped weights with
            ``Predictor.load(use_gate=use_gate, saliency=saliency)``.
        max_upload_bytes: Largest file accepted by ``POST /v1/predict`` (413 above it).
        use_gate: Refuse images the input gate does not take for a frontal chest X-ray.
        saliency: Compute the Grad-CAM heat map.
        severity: Score lesions and severity.
        backend, onnx_dir: ``"onnxruntime"`` runs the models exported by ``covidcxr export onnx`` without PyTorch.
        max_pixels: Largest image, in pixels, read from its header before decoding (413 above it).
        max_queue: Requests waiting for the models at most, besides the one being read (503 above it).
        allowed_hosts: Host names answered (400 for others); ``"*"`` for any. The default is the
            loopback names: TestClient's ``testserver`` needs adding.
        read_timeout: Seconds an upload may stall before 408.

    Returns:
        The FastAPI app, ready for uvicorn or ``fastapi.testclient.TestClient``.
    """
    if pipeline is None:
        pipeline = Predictor.load(
            use_gate=use_gate, saliency=saliency, severity=severity, backend=backend, onnx_dir=onnx_dir
        )
    models = pipeline.models
    limit_mb = f"{max_upload_bytes / 2**20:.3g} MB"
    too_large = f"upload larger than the server's limit of {limit_mb}; send a smaller file (e.g. PNG instead of uncompressed TIFF) or restart the server with a larger --max-upload-mb"
    queue = _Queue(limit=max_queue + 1)
    # One thread for decoding, the models and the PNGs: the models and Grad-CAM hooks are not re-entrant,
    # and one image decoded at a time bounds memory (a 100 kB PNG can decode to gigabytes).
    pools: list[ThreadPoolExecutor] = []

    def model_thread() -> ThreadPoolExecutor:
        if not pools:
            pools.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidcxr-models"))
        return pools[0]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        while pools:
            pools.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="covidcxr",
        summary="Chest X-ray lung segmentation, COVID-19 pneumonia reading and severity scores.",
        description="Research and teaching only; not for clinical decisions.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # served below from this server's own copy of Swagger UI, not from a CDN
        redoc_url=None,
    )
    # Added innermost first: headers on every answer, then Host/Origin, the queue, the upload limit.
    app.add_middleware(
        UploadLimit, max_body=max_upload_bytes + _MULTIPART_OVERHEAD, message=too_large, read_timeout=read_timeout
    )
    app.add_middleware(Admission, queue=queue)
    app.add_middleware(HostCheck, allowed_hosts=list(allowed_hosts))
    app.add_middleware(SecurityHeaders)
    _add_error_handlers(app)
    _add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health", response_model=Health, summary="Liveness and the loaded weight files")
    async def health() -> dict:
        return {"status": "ok", "models": models}

    def read(upload: BinaryIO, name: str) -> dict:
        """Decode, run the models, encode the PNGs: in the model thread, one request at a time."""
        start = time.perf_counter()
        data = upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large)
        try:
            image = read_image(data, name=name, max_pixels=max_pixels)
        except ImageTooLargeError as err:
            raise HTTPException(
                413,
                f"{err.path}: {err.problem.split(' (possible')[0]}; send a smaller export, or restart the server with a larger "
                "--max-pixels for files you trust",
            ) from None
        except ImageReadError as err:
            raise HTTPException(422, str(err)) from None
        del data
        try:
            result = pipeline.run([image])[0]
            result.path = name
            if not result.ok:
                raise HTTPException(422, f"{name}: {web_message(result.error)}")
            row = answer(result, image)
        finally:
            del image
            trim_heap()  # hand the image's pages back: resident memory stays flat between requests
            queue.seconds = 0.8 * queue.seconds + 0.2 * (time.perf_counter() - start)
        return row

    @app.post(
        "/v1/predict",
        response_model=Prediction,
        response_model_exclude_unset=True,
        responses=_ERRORS,
        summary="Read one chest X-ray",
    )
    async def predict(
        request: Request, file: Annotated[UploadFile, File(description="A PNG, JPEG, TIFF, BMP or DICOM chest X-ray.")]
    ) -> dict:
        # Async, the work in the model thread: the event loop stays free to answer /health and to send
        # finished answers at once, and no thread of the shared pool waits for the models.
        if len((await request.form()).getlist("file")) > 1:  # the form is parsed already; this reads the cache
            raise HTTPException(
                422, "several parts named 'file'; send one X-ray per request (curl -F file=@scan.png URL/v1/predict)"
            )
        name = Path(file.filename or "").name or "upload"
        return await asyncio.get_running_loop().run_in_executor(model_thread(), read, file.file, name)

    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("covidcxr")
    except PackageNotFoundError:
        return "unknown"
