"""``covidcxr serve``: the REST API on the shipped models, through FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis import GenerationMode

from covidcxr.cli import SAMPLE, build_parser, main
from covidcxr.data.classification import CLASSES
from covidcxr.infer import Predictor, Result
from covidcxr.infer.diagnosis import headline
from covidcxr.infer.uncertainty import CAVEAT
from covidcxr.predict import CLI_OVERRIDE
from covidcxr.specs import shipped_spec_path
from covidcxr.web import create_app
from covidcxr.web.app import DISPLAY_SIDE, Prediction

KEYS = {
    "path",
    "probabilities",
    "prediction",
    "lung_mask",
    "heatmap",
    "report",
    "model",
    "warnings",
    "lung_area",
    "gate_probability",
    "severity",
    "uncertain",
    "uncertain_reason",
    "image",
    "overlays",
    "saliency_method",
}


@pytest.fixture(scope="module")
def pipeline() -> Predictor:
    return Predictor.load()


@pytest.fixture(scope="module")
def client(pipeline):
    with TestClient(
        create_app(pipeline, allowed_hosts=["testserver"])
    ) as c:  # one event loop for the module, as under uvicorn
        yield c


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _decode(png: dict) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(png["png_base64"])))
    img.load()
    assert img.format == "PNG"
    return img


def _assert_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    for word in words:
        assert word in body["error"]
    return body["error"]


def test_health_lists_every_model(client, pipeline):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "models": pipeline.models, "backend": pipeline.backend}
    assert pipeline.backend in ("torch", "onnxruntime")
    assert set(r.json()["models"]) == {"lungs", "diagnosis", "gate", "lesions", "severity"}


def test_predict_sample_is_a_predictions_row_with_inline_pngs(client):
    r = client.post("/v1/predict", files={"file": ("sample_cxr.jpg", SAMPLE.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    row = r.json()
    assert set(row) >= KEYS and "error" not in row
    assert row["path"] == "sample_cxr.jpg"
    assert set(row["probabilities"]) == set(CLASSES)
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-5
    op = json.loads(shipped_spec_path("diagnosis").read_text()).get("operating_point")  # the headline's rule
    probs = np.array([[row["probabilities"][c] for c in CLASSES]])
    assert row["prediction"] == CLASSES[int(headline(probs, list(CLASSES), op)[0])]
    size = Image.open(SAMPLE).size
    assert _decode(row["lung_mask"]).size == size and _decode(row["heatmap"]).size == size
    assert _decode(row["report"]).size[0] > 400
    sev = row["severity"]
    assert 0 <= sev["geographic_extent"] <= 8 and 0 <= sev["opacity"] <= 6
    assert set(sev["brixia"]) == {"A", "B", "C", "D", "E", "F", "global"}
    assert all(0 <= v <= 1 for lesion in sev["lesions"].values() for v in lesion.values())
    assert 0 <= row["saliency_in_lungs"] <= 1
    # What the page draws: the image as read and its layers, all at one size.
    assert isinstance(row["uncertain"], bool) and (row["uncertain_reason"] is None) is not row["uncertain"]
    image = _decode(row["image"])
    assert image.mode == "L" and image.size == size
    assert set(row["overlays"]) == {"lungs", "heatmap", "lesions", "zones"}
    for name, png in row["overlays"].items():
        layer = _decode(png)
        assert layer.mode == "RGBA" and layer.size == size, name
        alpha = np.asarray(layer)[..., 3]
        assert 0 < (alpha > 0).mean() < 0.5, name  # something drawn, most of it transparent
    assert row["saliency_method"]
    Prediction.model_validate(row)


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("notes.png", b"this is a text file, not an X-ray\n", ("notes.png", "text file")),
        ("empty.png", b"", ("empty.png", "empty")),
        ("blank.png", _png(np.full((300, 300), 128, np.uint8)), ("blank.png", "blank")),
        (
            "flat.png",
            _png((128 + (np.indices((300, 300)).sum(0) % 2)).astype(np.uint8)),
            ("flat.png", "blank or near-uniform"),
        ),
        (
            "noise.png",
            _png((np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8)),
            ("noise.png", "not recognised as a frontal chest X-ray"),
        ),
    ],
    ids=["text-as-png", "empty", "uniform", "near-uniform", "gate-refusal"],
)
def test_unreadable_or_refused_uploads_get_422_with_one_message(client, name, data, words):
    _assert_error(client.post("/v1/predict", files={"file": (name, data, "image/png")}), 422, *words)


def test_missing_file_field_gets_422_error_shape(client):
    _assert_error(client.post("/v1/predict", data={"picture": "x"}), 422, "'file'")
    _assert_error(client.post("/v1/predict"), 422, "'file'")
    _assert_error(client.post("/v1/predict", data={"file": "not a file"}), 422, "file")


def test_uploads_over_the_limit_get_413(pipeline):
    with TestClient(create_app(pipeline, max_upload_bytes=10_000, allowed_hosts=["testserver"])) as small:
        # Content-Length above the limit: refused before the body is read.
        _assert_error(
            small.post("/v1/predict", files={"file": ("big.jpg", SAMPLE.read_bytes(), "image/jpeg")}), 413, "limit"
        )
        # Body within the multipart allowance but the file itself over the limit.
        _assert_error(
            small.post("/v1/predict", files={"file": ("big.png", b"\0" * 20_000, "image/png")}), 413, "--max-upload-mb"
        )
        # No Content-Length (chunked): counted while it streams in.
        head = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
        )

        def chunks():
            yield head
            for _ in range(200):
                yield b"\0" * 1000

        r = small.post("/v1/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert "content-length" not in r.request.headers
        _assert_error(r, 413, "limit")


def test_concurrent_requests_all_succeed_and_health_stays_responsive(client):
    # 256 px: the models' own input size, so each request spends its time in the models and Grad-CAM.
    small = Image.open(SAMPLE).convert("L").resize((256, 256))
    data = _png(np.asarray(small))
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(client.post, "/v1/predict", files={"file": (f"cxr{i}.png", data, "image/png")})
            for i in range(8)
        ]
        time.sleep(0.2)
        t0 = time.perf_counter()
        health = client.get("/health")
        health_s = time.perf_counter() - t0
        pending = sum(not f.done() for f in futures)
        responses = [f.result() for f in futures]
    assert health.status_code == 200 and pending > 0 and health_s < 2.0, (health_s, pending)
    assert all(r.status_code == 200 for r in responses), [r.text[:200] for r in responses if r.status_code != 200]
    rows = [r.json() for r in responses]
    assert [row["path"] for row in rows] == [f"cxr{i}.png" for i in range(8)]
    # Serialised inference: every request sees the same models in the same state.
    for row in rows[1:]:
        assert row["probabilities"] == pytest.approx(rows[0]["probabilities"], abs=1e-6)
        assert row["severity"] == rows[0]["severity"]


def test_openapi_documents_both_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/health", "/v1/predict"} <= set(spec["paths"])
    responses = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Prediction")
    for status in ("413", "422"):
        assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"severity", "probabilities", "report", "uncertain", "uncertain_reason", "image", "overlays"} <= set(
        spec["components"]["schemas"]["Prediction"]["properties"]
    )


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Research and teaching only; not for clinical decisions." in page.text
    assert "http://" not in page.text and "https://" not in page.text  # works offline: nothing fetched from elsewhere
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    _assert_error(client.get("/nowhere"), 404, "/nowhere")


def test_serve_command_line():
    args = build_parser().parse_args(["serve", "--port", "9000", "--no-gate"])
    assert (args.host, args.port, args.max_upload_mb, args.no_gate, args.no_saliency) == (
        "127.0.0.1",
        9000,
        20.0,
        True,
        False,
    )
    assert main(["serve", "--max-upload-mb", "0"]) == 2


@pytest.fixture(scope="module")
def api_schema(pipeline):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(pipeline, allowed_hosts=["*"]))


# Not schemathesis.pytest.from_fixture + @parametrize: it breaks on pytest 9 ("'Function' object has
# no attribute '_nodeid'"); the operation's Hypothesis strategy does the same job.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        ("GET", "/health", GenerationMode.POSITIVE),
        ("POST", "/v1/predict", GenerationMode.POSITIVE),
        ("POST", "/v1/predict", GenerationMode.NEGATIVE),
    ],
    ids=["health", "predict-valid", "predict-invalid"],  # /health takes no input, so no invalid one
)
def test_api_conforms_to_its_openapi_schema(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        # Any bytes fit the schema's "binary file", yet most are no X-ray: 422 is the right answer
        # to such "valid" data here, so positive_data_acceptance does not apply.
        case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])

    check()


class FakePredictor:
    """The :class:`covidcxr.infer.Predictor` interface without models: a box as lungs, lesions and zones on a 256 grid."""

    models = {"lungs": {"name": "fake", "sha256": "0" * 64}}

    def run(self, images: list[np.ndarray]) -> list[Result]:
        out = []
        for im in images:
            h, w = im.shape
            mask = np.zeros(im.shape, bool)
            mask[h // 5 : -h // 5, w // 5 : -w // 5] = True
            lesions = np.zeros((2, 256, 256), bool)
            lesions[0, 100:140, 60:100] = True  # ground-glass
            lesions[1, 150:170, 160:200] = True  # consolidation
            zones = np.zeros((256, 256), np.uint8)
            zones[52:204, 52:128], zones[52:204, 128:204] = 1, 4
            zones[104:204, 52:128], zones[104:204, 128:204] = 2, 5
            out.append(
                Result(
                    probabilities={"COVID-19": 0.2, "Other pneumonia": 0.3, "No finding": 0.5},
                    prediction="No finding",
                    uncertain=False,
                    gate_probability=0.9,
                    saliency_method="Grad-CAM",
                    saliency_in_lungs=0.5,
                    model=self.models,
                    lung_mask=mask,
                    heatmap=np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1)),  # 0 at the left, 1 at the right
                    lesions=lesions,
                    zones=zones,
                )
            )
        return out


def test_large_image_is_shrunk_for_the_page_and_its_overlays_drawn_to_scale():
    with TestClient(create_app(FakePredictor(), allowed_hosts=["testserver"])) as fake:
        big = (np.indices((1500, 2000)).sum(0) % 251).astype(np.uint8)
        r = fake.post("/v1/predict", files={"file": ("big.png", _png(big), "image/png")})
    assert r.status_code == 200, r.text
    row = r.json()
    assert _decode(row["lung_mask"]).size == (2000, 1500)  # the API's own PNGs stay at the image's size
    image = _decode(row["image"])
    assert image.mode == "L" and image.size == (DISPLAY_SIDE, 768)
    layers = {name: np.asarray(_decode(png)) for name, png in row["overlays"].items()}
    assert all(a.shape == (768, DISPLAY_SIDE, 4) for a in layers.values()), {k: a.shape for k, a in layers.items()}
    lungs = layers["lungs"]
    drawn = lungs[..., 3] > 0
    assert (lungs[drawn][:, :3] == (0, 229, 255)).all()  # cyan outline only
    assert drawn[768 // 5 - 1 : 768 // 5 + 3, 400].any() and not drawn[384, 400]  # on the border, not inside
    heat = layers["heatmap"]
    assert (heat[:, : int(0.14 * DISPLAY_SIDE), 3] == 0).all()  # below 0.15: transparent
    assert heat[:, -5:, 3].min() > heat[:, DISPLAY_SIDE // 2, 3].max() > 0  # opacity grows with the value
    lesions = layers["lesions"]
    # Ground-glass at rows 100-140, columns 60-100 of the 256 grid: stretched to the image, 4 px a cell here.
    assert tuple(lesions[120 * 3, 80 * 4, :3]) == (255, 200, 0) and lesions[120 * 3, 80 * 4, 3] > 0
    assert tuple(lesions[160 * 3, 180 * 4, :3]) == (230, 30, 30)
    assert lesions[20, 20, 3] == 0
    zones = layers["zones"]
    assert zones[104 * 3, 90 * 4, 3] == 255 and zones[80 * 3, 90 * 4, 3] == 0  # the border between zones A and B
    assert row["uncertain"] is False and row["uncertain_reason"] is None and row["saliency_method"] == "Grad-CAM"
    Prediction.model_validate(row)


def test_gate_refusal_is_worded_for_a_web_user(client):
    noise = _png((np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8))
    message = _assert_error(
        client.post("/v1/predict", files={"file": ("noise.png", noise, "image/png")}), 422, "noise.png"
    )
    assert CLI_OVERRIDE not in message
    assert "frontal chest X-rays only" in message
    # Every mention of --no-gate says it is an option of covidcxr serve.
    assert "--no-gate" in message
    assert all("serve" in message[max(0, m.start() - 20) : m.start()] for m in re.finditer("--no-gate", message))


def test_docs_are_served_from_the_app_itself(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = re.findall(r"https?://[^\s\"'<>)]+", r.text)
    assert all(u.startswith("http://testserver/") for u in urls), urls
    refs = re.findall(r"(?:src|href|url)\s*[=:]\s*['\"]([^'\"]+)['\"]", r.text)
    assert refs and all(ref.startswith("/") for ref in refs), refs
    for ref in refs:
        assert client.get(ref).status_code == 200, ref
    csp = r.headers["content-security-policy"]
    assert "http" not in csp and "cdn" not in csp and "*" not in csp, csp
    assert "script-src 'self' 'sha256-" in csp and "'unsafe-eval'" not in csp
    # The page's own CSP allows no other origin either.
    assert "http" not in client.get("/").headers["content-security-policy"]
    spec = client.get(re.search(r"url: '([^']+)'", r.text).group(1)).json()
    assert spec["openapi"].startswith("3.0") and spec["info"]["title"] == "covidcxr"
    assert "anyOf" not in str(spec) and "/v1/predict" in spec["paths"]
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")  # the API's own document unchanged
    assert client.get("/redoc").status_code == 404


def test_page_carries_the_models_caveat(client):
    assert CAVEAT in client.get("/").text
