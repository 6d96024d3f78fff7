"""The FastAPI app: ``GET /health``, ``POST /v1/predict`` and the web page at ``GET /``.

``POST /v1/predict`` answers with the same object as one ``predictions.jsonl`` row of
``covidcxr predict``; the three PNGs it would write (lung mask, heat map, report) come
inline as base64. For the page it adds the image as read (grey PNG, longer side at most
:data:`DISPLAY_SIDE`) and transparent overlays at that size (lung outline, heat map,
lesions, Brixia zones), and ``saliency_method``, what the heat map shows. A gate refusal
ends with :data:`WEB_OVERRIDE`, this server's way to read the image anyway. Every refusal is ``{"error": "..."}``: 413 for an upload or an image over
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
  next get 503 with ``Retry-After``. A request takes its place once its whole body has arrived,
  so uploads still dripping in hold no place ahead of complete ones; a client that hangs up
  before its turn has its reading dropped, never run.
- **Upload size and pace.** Bodies over the limit get 413; a body that stalls for
  ``read_timeout`` seconds, or is not complete ``upload_timeout`` seconds after the request
  began, gets 408.
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
behind a reverse proxy. The PNGs of a reading are built in memory: nothing of an upload touches
the disk.

The parts: :mod:`~covidcxr.web.guards` (admission), :mod:`~covidcxr.web.schemas` (the answers'
models), :mod:`~covidcxr.web.overlays` (what the page draws), :mod:`~covidcxr.web.docs` (``/docs``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, BinaryIO

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..batch import trim_heap
from ..infer import Predictor, Result
from ..io import SERVE_MAX_PIXELS, ImageReadError, ImageTooLargeError, heatmap_png, mask_png, png_bytes, read_image
from ..predict import write_report
from .docs import add_docs
from .guards import (
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_UPLOAD_TIMEOUT_S,
    LOOPBACK_HOSTS,
    SECURITY_HEADERS,
    Admission,
    HostCheck,
    Queue,
    SecurityHeaders,
    UploadLimit,
)
from .overlays import DISPLAY_SIDE, display_pngs, png_field
from .schemas import ERRORS, Health, Prediction

__all__ = [
    "DEFAULT_READ_TIMEOUT_S",
    "DISPLAY_SIDE",
    "LOOPBACK_HOSTS",
    "SECURITY_HEADERS",
    "WEB_OVERRIDE",
    "Prediction",
    "UploadLimit",
    "answer",
    "create_app",
    "web_message",
]

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_QUEUE = 32
#: How to read a refused image anyway, said to a user of the page or the API (the command line says :data:`covidcxr.predict.CLI_OVERRIDE`).
WEB_OVERRIDE = (
    "this server reads frontal chest X-rays only (PA or AP); upload one, "
    "or restart it as covidcxr serve --no-gate to read anyway (research use)"
)
#: Room for the multipart boundary and part headers on top of the file itself.
_MULTIPART_OVERHEAD = 64 * 1024


# ---------------------------------------------------------------------------
# Plumbing: the upload limit and the {"error": ...} shape for every refusal.


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


def web_message(result: Result) -> str:
    """The error of a reading, worded for a user of the page or the API: a gate refusal ends with :data:`WEB_OVERRIDE`."""
    return result.error + (f"; {WEB_OVERRIDE}" if result.overridable else "")


def answer(result: Result, image: np.ndarray) -> dict:
    """The answer to ``POST /v1/predict`` for a reading: its ``predictions.jsonl`` row, the PNGs inline, the page's layers.

    The PNGs are built in memory: nothing of an upload touches the disk.
    """
    files = {
        "lung_mask": png_field(png_bytes(mask_png, result.lung_mask)),
        "heatmap": None if result.heatmap is None else png_field(png_bytes(heatmap_png, result.heatmap)),
        "report": png_field(png_bytes(write_report, result, image)),
    }
    row = result.to_dict(files) | display_pngs(result, image)
    row["saliency_method"] = result.saliency_method
    return row


class _ModelThread:
    """One thread for decoding, the models and the PNGs, started on first use and stopped with the app.

    The models and Grad-CAM hooks are not re-entrant, and one image decoded at a time bounds
    memory (a 100 kB PNG can decode to gigabytes).
    """

    def __init__(self) -> None:
        self.pools: list[ThreadPoolExecutor] = []

    def pool(self) -> ThreadPoolExecutor:
        if not self.pools:
            self.pools.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="covidcxr-models"))
        return self.pools[0]

    def runs(self, read: Callable[..., dict]) -> Callable[..., Awaitable[dict]]:
        """``read`` as a coroutine function that runs it in this thread."""
        return lambda *args: asyncio.get_running_loop().run_in_executor(self.pool(), read, *args)

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        yield
        while self.pools:
            self.pools.pop().shutdown(wait=False, cancel_futures=True)


def _reader(
    pipeline: Predictor, queue: Queue, max_upload_bytes: int, max_pixels: int, too_large: str
) -> Callable[[BinaryIO, str], dict]:
    """The reading of one upload, for the model thread: decode, run the models, build the answer (or raise the refusal)."""

    def read(upload: BinaryIO, name: str, dicom: bool = False) -> dict:
        """Decode, run the models, encode the PNGs (and with ``dicom`` the DICOM results): in the model thread."""
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
        source = data if dicom else None
        del data
        try:
            result = pipeline.run([image])[0]
            result.path = name
            if not result.ok:
                raise HTTPException(422, f"{name}: {web_message(result)}")
            row = answer(result, image)
            if source is not None:
                row |= dicom_answer(source, name, result, row)
        finally:
            del image, source
            trim_heap()  # hand the image's pages back: resident memory stays flat between requests
            queue.seconds = 0.8 * queue.seconds + 0.2 * (time.perf_counter() - start)
        return row

    return read


def dicom_answer(source: bytes, name: str, result: Result, row: dict) -> dict:
    """``dicom``: the SEG, SR and SC of a DICOM upload as base64 DICOM files; ``dicom_note`` for another upload."""
    try:
        from ..dicom.outputs import dicom_row
    except ImportError as err:
        raise HTTPException(
            501, f"this server cannot write DICOM results ({err.name} is missing): pip install 'covidcxr[dicom]' there"
        ) from None
    report = base64.b64decode(row["report"]["png_base64"]) if row.get("report") else None
    extra = dicom_row(source, name, result, result.to_dict(), report)
    if "dicom" in extra:
        extra["dicom"] = {kind: {"dicom_base64": base64.b64encode(_dicom_bytes(ds)).decode("ascii")} for kind, ds in extra["dicom"].items()}  # fmt: skip
    return extra


def _dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _add_predict(app: FastAPI, read: Callable[..., Awaitable[dict]]) -> None:
    """``POST /v1/predict``; ``read(upload, name, dicom)`` runs the reading in the model thread."""

    @app.post(
        "/v1/predict",
        response_model=Prediction,
        response_model_exclude_unset=True,
        responses=ERRORS,
        summary="Read one chest X-ray",
    )
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="A PNG, JPEG, TIFF, BMP or DICOM chest X-ray.")],
        dicom: Annotated[
            bool,
            Form(
                description="1: also answer `dicom`, the SEG, SR and report secondary capture of a DICOM upload "
                "(base64 DICOM files in the upload's study; research use); other uploads get `dicom_note`."
            ),
        ] = False,
    ) -> dict:
        # Async, the work in the model thread: the event loop stays free to answer /health and to send
        # finished answers at once, and no thread of the shared pool waits for the models.
        if len((await request.form()).getlist("file")) > 1:  # the form is parsed already; this reads the cache
            raise HTTPException(
                422, "several parts named 'file'; send one X-ray per request (curl -F file=@scan.png URL/v1/predict)"
            )
        name = Path(file.filename or "").name or "upload"
        reading = asyncio.ensure_future(read(file.file, name, dicom))
        hung_up = asyncio.ensure_future(_disconnect(request))
        try:
            await asyncio.wait({reading, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hung_up.cancel()
        if not reading.done():
            reading.cancel()  # still waiting for the model thread: it never runs
            log.info("%s: the client hung up before its reading; dropped", name)
            raise HTTPException(499, "the client closed the connection before its reading")
        return reading.result()


async def _disconnect(request: Request) -> None:
    """Return when the client hangs up; after a complete body, the only message left to receive is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _add_guards(app: FastAPI, queue, allowed_hosts: Sequence[str], **upload) -> None:
    """Middleware, added innermost first: headers on every answer, then Host/Origin, the queue, the upload limit."""
    app.add_middleware(UploadLimit, **upload)
    app.add_middleware(Admission, queue=queue)
    app.add_middleware(HostCheck, allowed_hosts=list(allowed_hosts))
    app.add_middleware(SecurityHeaders)


def create_app(
    pipeline: Predictor | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    use_gate: bool = True,
    saliency: bool = True,
    severity: bool = True,
    backend: str = "auto",
    onnx_dir: str | None = None,
    *,
    max_pixels: int = SERVE_MAX_PIXELS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
) -> FastAPI:
    """Build the app around one pipeline, loaded here once (or injected, as the tests do).

    Args:
        pipeline: The models to serve; ``None`` loads the shipped weights with
            ``Predictor.load(use_gate=use_gate, saliency=saliency)``.
        max_upload_bytes: Largest file accepted by ``POST /v1/predict`` (413 above it).
        use_gate: Refuse images the input gate does not take for a frontal chest X-ray.
        saliency: Compute the Grad-CAM heat map.
        severity: Score lesions and severity.
        backend, onnx_dir: ``"onnxruntime"`` runs the shipped ONNX graphs (or those ``covidcxr export onnx``
            wrote to ``onnx_dir``) without PyTorch; ``"auto"``: torch where it is installed, else onnxruntime.
        max_pixels: Largest image, in pixels, read from its header before decoding (413 above it).
        max_queue: Requests waiting for the models at most, besides the one being read (503 above it).
        allowed_hosts: Host names answered (400 for others); ``"*"`` for any. The default is the
            loopback names: TestClient's ``testserver`` needs adding.
        read_timeout: Seconds an upload may stall before 408.
        upload_timeout: Seconds a whole upload may take before 408, however steadily it arrives.

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
    queue = Queue(limit=max_queue + 1)
    thread = _ModelThread()
    app = FastAPI(
        title="covidcxr",
        summary="Chest X-ray lung segmentation, COVID-19 pneumonia reading and severity scores.",
        description="Research and teaching only; not for clinical decisions.",
        version=__version__,
        lifespan=thread.lifespan,
        docs_url=None,  # served below from this server's own copy of Swagger UI, not from a CDN
        redoc_url=None,
    )
    app.state.backend = getattr(pipeline, "backend", None)  # said by `covidcxr serve` when it starts
    upload = {"max_body": max_upload_bytes + _MULTIPART_OVERHEAD, "message": too_large}
    _add_guards(app, queue, allowed_hosts, **upload, read_timeout=read_timeout, upload_timeout=upload_timeout)
    _add_error_handlers(app)
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health", response_model=Health, summary="Liveness and the loaded weight files")
    async def health() -> dict:
        return {"status": "ok", "models": models, "backend": app.state.backend}

    _add_predict(app, thread.runs(_reader(pipeline, queue, max_upload_bytes, max_pixels, too_large)))

    return app
