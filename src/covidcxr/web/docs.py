"""``GET /docs``: Swagger UI from this server's own copy (the swagger-ui-bundle package), nothing from a CDN."""

from __future__ import annotations

import base64
import hashlib
import re

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

#: The /docs page: Swagger UI from this server only; its one inline script is allowed by its hash, its
#: inline styles (set by Swagger UI's React components) by 'unsafe-inline'. No other origin at all.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' {script_hash}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Where Swagger UI's files are served (from the swagger-ui-bundle package).
SWAGGER_PATH = "/static/swagger"
#: The OpenAPI document /docs shows: /openapi.json said in OpenAPI 3.0 for the bundled Swagger UI 4.
DOCS_OPENAPI_URL = "/docs/openapi-3.0.json"


def openapi_30(node):
    """FastAPI's OpenAPI 3.1 document (or a part of it) said in OpenAPI 3.0, which the bundled Swagger UI (4.x) reads.

    ``anyOf [X, {"type": "null"}]`` becomes X with ``nullable``, ``const`` a one-value ``enum``,
    an upload's ``contentMediaType`` the ``format: binary`` that gives Swagger UI its file picker.
    """
    if isinstance(node, list):
        return [openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_30(v) for k, v in node.items()}
    if out.get("openapi", "").startswith("3.1"):
        out["openapi"] = "3.0.3"
        info = out.get("info", {})
        if "summary" in info:  # 3.1 only
            summary = info.pop("summary")
            info["description"] = f"{summary} {info.get('description', '')}".strip()
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" in rest[0]:
            out["allOf"] = rest
        elif len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if out.get("type") == "string" and "contentMediaType" in out:
        del out["contentMediaType"]
        out["format"] = "binary"
    return out


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


def add_docs(app: FastAPI) -> None:
    """``GET /docs`` and Swagger UI's files under :data:`SWAGGER_PATH` (mounted before ``/static``, which would hide them).

    The bundled Swagger UI reads OpenAPI 3.0 only: it is given :func:`openapi_30` of the
    document, at a URL of its own; ``/openapi.json`` stays FastAPI's 3.1.
    """
    app.mount(SWAGGER_PATH, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
    documents: list[dict] = []

    @app.get(DOCS_OPENAPI_URL, include_in_schema=False)
    async def openapi_for_docs() -> JSONResponse:
        if not documents:
            documents.append(openapi_30(app.openapi()))
        return JSONResponse(documents[0])

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return docs_page(f"{root}{DOCS_OPENAPI_URL}", f"{app.title} API", root)
