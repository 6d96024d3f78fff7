"""The FastAPI app: ``GET /health``, ``POST /v1/predict`` and the web page at ``GET /``.

``POST /v1/predict`` answers with the same object as one ``predictions.jsonl`` row of
``covidcxr predict``; the three PNGs it would write (lung mask, heat map, report) come
inline as base64. Every refusal is ``{"error": "..."}``: 413 for an upload over the limit,
422 for a missing field, an unreadable file (the CLI's reader and its refusals) or an image
the gate refuses.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..io import ImageReadError, read_image
from ..predict import Pipeline, _write_outputs

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Room for the multipart boundary and part headers on top of the file itself.
_MULTIPART_OVERHEAD = 64 * 1024
_IMAGE_KEYS = ("lung_mask", "heatmap", "report")


# ---------------------------------------------------------------------------
# Response models: they document /openapi.json and check every answer.


class Error(BaseModel):
    error: str = Field(description="What was wrong with the request, and how to fix it; one sentence.")


class ModelInfo(BaseModel):
    name: str
    sha256: str


class Health(BaseModel):
    status: Literal["ok"]
    models: dict[str, ModelInfo] = Field(description="Name and sha256 of each weight file loaded (lungs, diagnosis, gate, lesions, severity).")


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
    brixia: Brixia = Field(description="Brixia score per zone, 0-3: A-C the patient's right lung top to bottom, D-F the left lung.")
    lesions: dict[str, LungShares] = Field(description="Share of each lung covered by each lesion type (ground-glass, consolidation).")


class Prediction(BaseModel):
    path: str = Field(description="The uploaded file's name.")
    probabilities: dict[str, float] = Field(description="COVID-19, Other pneumonia, No finding: calibrated, summing to 1.")
    prediction: str
    lung_mask: PNG = Field(description="0/255 lung mask at the input's pixel size.")
    heatmap: PNG | None = Field(description="Grad-CAM of the predicted class; null when the server runs with --no-saliency.")
    report: PNG | None = Field(description="The report: X-ray with lung outline, heat map, lesions and zones, probabilities.")
    model: dict[str, ModelInfo]
    warnings: list[str]
    lung_area: float
    gate_probability: float
    saliency_in_lungs: float | None = None
    severity: Severity | None = None


_ERRORS = {
    400: {"model": Error, "description": "The body is not valid multipart/form-data."},
    413: {"model": Error, "description": "The upload is larger than the server's limit."},
    422: {"model": Error, "description": "No file, an unreadable file, or an image refused as not a frontal chest X-ray."},
}


# ---------------------------------------------------------------------------
# Plumbing: the upload limit and the {"error": ...} shape for every refusal.


class UploadLimit:
    """Refuse request bodies over ``max_body`` bytes before they are parsed: from Content-Length, else while reading."""

    def __init__(self, app: ASGIApp, max_body: int, message: str) -> None:
        self.app, self.max_body, self.message = app, max_body, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            await JSONResponse({"error": self.message}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
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
            what = "no file uploaded" if err.get("type") == "missing" else "the field 'file' holds text, not a file with a name"
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
            message = f"malformed request body ({exc.detail}); send the X-ray as multipart/form-data in the field 'file'"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": str(message)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"}, status_code=500)


# ---------------------------------------------------------------------------
# The app


def _png(path: str | None) -> dict | None:
    return None if path is None else {"png_base64": base64.b64encode(Path(path).read_bytes()).decode("ascii")}


def create_app(pipeline: Pipeline | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, use_gate: bool = True, saliency: bool = True,
               severity: bool = True, backend: str = "torch", onnx_dir: str | None = None) -> FastAPI:
    """Build the app around one pipeline, loaded here once (or injected, as the tests do).

    Args:
        pipeline: The models to serve; ``None`` loads the shipped weights with
            ``Pipeline.load(use_gate=use_gate, saliency=saliency)``.
        max_upload_bytes: Largest file accepted by ``POST /v1/predict`` (413 above it).
        use_gate: Refuse images the input gate does not take for a frontal chest X-ray.
        saliency: Compute the Grad-CAM heat map.
        severity: Score lesions and severity.
        backend, onnx_dir: ``"onnxruntime"`` runs the models exported by ``covidcxr export onnx`` without PyTorch.

    Returns:
        The FastAPI app, ready for uvicorn or ``fastapi.testclient.TestClient``.
    """
    if pipeline is None:
        pipeline = Pipeline.load(use_gate=use_gate, saliency=saliency, severity=severity, backend=backend, onnx_dir=onnx_dir)
    models = pipeline.models
    lock = threading.Lock()  # the models and Grad-CAM hooks are not re-entrant; pyplot neither
    limit_mb = f"{max_upload_bytes / 2**20:.3g} MB"
    too_large = f"upload larger than the server's limit of {limit_mb}; send a smaller file (e.g. PNG instead of uncompressed TIFF) or restart the server with a larger --max-upload-mb"

    app = FastAPI(
        title="covidcxr",
        summary="Chest X-ray lung segmentation, COVID-19 pneumonia reading and severity scores.",
        description="Research and teaching only; not for clinical decisions.",
        version=_version(),
    )
    app.add_middleware(UploadLimit, max_body=max_upload_bytes + _MULTIPART_OVERHEAD, message=too_large)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health", response_model=Health, summary="Liveness and the loaded weight files")
    async def health() -> dict:
        return {"status": "ok", "models": models}

    @app.post("/v1/predict", response_model=Prediction, response_model_exclude_unset=True, responses=_ERRORS, summary="Read one chest X-ray")
    def predict(file: Annotated[UploadFile, File(description="A PNG, JPEG, TIFF, BMP or DICOM chest X-ray.")]) -> dict:
        # A sync endpoint: FastAPI runs it in a worker thread, so /health answers while it works.
        name = Path(file.filename or "").name or "upload"
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large)
        try:
            image = read_image(data, name=name)
        except ImageReadError as err:
            raise HTTPException(422, str(err)) from None
        with lock, tempfile.TemporaryDirectory(prefix="covidcxr-serve-") as tmp:
            result = pipeline.run([image])[0]
            row = _write_outputs(Path(name), "upload", image, result, Path(tmp), models, report=True)
            if "error" in row:
                raise HTTPException(422, row["error"])
            row.update({key: _png(row[key]) for key in _IMAGE_KEYS})
        return row

    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("covidcxr")
    except PackageNotFoundError:
        return "unknown"
