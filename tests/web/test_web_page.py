"""The web page of ``covidcxr serve`` end to end: uvicorn on a free port, Debian's headless Chromium via Playwright.

Uses the system browser (``apt-get install chromium``), never Playwright's own download.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from covidcxr.cli import SAMPLE
from covidcxr.data.classification import CLASSES
from covidcxr.infer import Result
from covidcxr.infer.uncertainty import CAVEAT
from covidcxr.web import create_app
from readings import TYPICAL, findings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


pytestmark = pytest.mark.browser  # CI installs Chromium and runs these with -m browser


UNSURE = "P(disease) 71% is close to the decision threshold 70%: a small change would flip disease / No finding"
LOW_RES = "low resolution: the image's shorter side is 200 px, below what the models read"
FINDINGS = findings()
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


class FakePredictor:
    """The :class:`covidcxr.infer.Predictor` interface without models: a box as lungs, a reading uncertain or not, no lesions."""

    models = {"lungs": {"name": "fake", "sha256": "0" * 64}}

    def __init__(self) -> None:
        self.uncertain = True
        self.empty_map = False  # a lesion-evidence map with no lesion in it

    def run(self, images: list[np.ndarray]) -> list[Result]:
        out = []
        for im in images:
            mask = np.zeros(im.shape, bool)
            mask[im.shape[0] // 5 : -im.shape[0] // 5, im.shape[1] // 5 : -im.shape[1] // 5] = True
            out.append(
                Result(
                    probabilities={"COVID-19": 0.41, "Other pneumonia": 0.3, "No finding": 0.29},
                    prediction="COVID-19",
                    uncertain=self.uncertain,
                    uncertain_reason=UNSURE if self.uncertain else None,
                    uncertain_reasons=[
                        {"code": "near_operating_point", "text": UNSURE},
                        {"code": "low_resolution", "text": LOW_RES},
                    ]
                    if self.uncertain
                    else [],
                    category=TYPICAL,
                    findings=FINDINGS,
                    gate_probability=0.9,
                    saliency_method="lesion evidence" if self.empty_map else "Grad-CAM",
                    saliency_in_lungs=float("nan") if self.empty_map else 0.5,
                    model=self.models,
                    lung_mask=mask,
                    heatmap=np.zeros_like(im) if self.empty_map else im,
                )
            )
        return out


@contextmanager
def _serving(app):
    """``app`` served by uvicorn from a background thread on a free localhost port; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # handed to uvicorn already bound: no race for the port
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start; see the log above")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server_url():
    """The real app (shipped models)."""
    with _serving(create_app()) as url:
        yield url


@pytest.fixture(scope="module")
def fake_server():
    """The app on a :class:`FakePredictor` (same process: a test may change its answers); yields (URL, predictor)."""
    predictor = FakePredictor()
    with _serving(create_app(predictor)) as url:
        yield url, predictor


@pytest.fixture()
def fake_page(browser, fake_server) -> tuple[Page, FakePredictor]:
    """The page of :func:`fake_server` at 375 x 740 CSS px, its predictor's readings uncertain."""
    url, predictor = fake_server
    predictor.uncertain = True
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    yield page, predictor
    predictor.uncertain, predictor.empty_map = True, False
    context.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y --no-install-recommends chromium); the web page test needs it"
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server_url) -> Page:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server_url)
    yield page
    context.close()


@pytest.fixture()
def narrow(browser, server_url) -> Page:
    """The page at a phone's width: 375 x 740 CSS px."""
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server_url)
    yield page
    context.close()


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob") or (parts.scheme in ("http", "ws") and parts.hostname in LOCAL_HOSTS)


def _loaded(page: Page, selector: str) -> None:
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i.complete && i.naturalWidth > 0; }", arg=selector
    )


def _read_sample(page: Page) -> None:
    page.set_input_files("#file", str(SAMPLE))
    expect(page.locator("#result")).to_be_visible(timeout=TIMEOUT_MS)
    for img in ("#xray", "#layer-lungs", "#layer-heatmap", "#report"):
        _loaded(page, img)


def test_page_reads_the_sample_xray(page):
    expect(page.locator("#disclaimer")).to_have_text("Research and teaching only; not for clinical decisions.")
    page.set_input_files("#file", str(SAMPLE))
    rows = page.locator("#probabilities tr.prob")
    expect(rows).to_have_count(len(CLASSES), timeout=TIMEOUT_MS)
    table = page.locator("#probabilities").inner_text()
    for name in CLASSES:
        assert name in table
    assert re.search(r"\d+\.\d%", table), table
    expect(page.locator("#error")).to_be_hidden()
    for img in ("#report", "#heatmap", "#lung-mask"):
        page.wait_for_function(
            "sel => { const i = document.querySelector(sel); return i.complete && i.naturalWidth > 0; }", arg=img
        )
    expect(page.locator("#severity")).to_be_visible()
    expect(page.locator("#sev-brixia")).to_have_text(re.compile(r"^\d+\.\d / 18$"))
    expect(page.locator("#lesions tbody tr")).to_have_count(2)
    expect(page.locator("#title")).to_contain_text("sample_cxr.jpg")


def test_page_shows_a_refusal_as_a_message(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("this is a text file, not an X-ray\n")
    page.set_input_files("#file", str(notes))
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=TIMEOUT_MS)
    expect(error).to_contain_text("notes.png")
    expect(error).to_contain_text("not an image but a text file")
    expect(page.locator("#result")).to_be_hidden()


def test_overlays_stack_on_the_xray_and_toggle(page):
    _read_sample(page)
    _loaded(page, "#layer-lesions")
    # On by default: lungs and heat map; lesions and zones off until asked for.
    for layer, shown in (("lungs", True), ("heatmap", True), ("lesions", False), ("zones", False)):
        img, toggle = page.locator(f"#layer-{layer}"), page.locator(f"#show-{layer}")
        expect(toggle).to_be_enabled()
        if shown:
            expect(toggle).to_be_checked()
            expect(img).to_be_visible()
        else:
            expect(toggle).not_to_be_checked()
            expect(img).to_be_hidden()
        toggle.click()
        (expect(img).to_be_hidden if shown else expect(img).to_be_visible)()
        box = img.bounding_box()  # drawn over the X-ray, pixel for pixel
        if box is not None:
            xray = page.locator("#xray").bounding_box()  # the click may have scrolled the page
            assert box == pytest.approx(xray, abs=1), (layer, box, xray)
        toggle.click()
        (expect(img).to_be_visible if shown else expect(img).to_be_hidden)()
    sizes = page.evaluate(
        "['xray', 'layer-lungs', 'layer-heatmap', 'layer-lesions', 'layer-zones']"
        ".map(id => { const i = document.getElementById(id); return [i.naturalWidth, i.naturalHeight]; })"
    )
    assert all(s == sizes[0] for s in sizes), sizes
    legend = page.locator(".legend").inner_text()
    for words in ("lungs", "ground-glass", "consolidation", "none → most", "lesion evidence"):
        assert words in legend, legend
    expect(page.locator("#title")).to_contain_text("sample_cxr.jpg")


def test_page_at_375_px_has_no_sideways_scrolling(narrow):
    _read_sample(narrow)
    expect(narrow.locator("#probabilities tr.prob")).to_have_count(len(CLASSES))
    expect(narrow.locator("#severity")).to_be_visible()
    narrow.locator("details summary").click()  # the JSON too
    width = narrow.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    assert narrow.locator("#xray").bounding_box()["width"] <= 375


def test_page_shows_the_caveat_under_the_result(page):
    _read_sample(page)
    caveat = page.locator("#caveat")
    expect(caveat).to_be_visible()
    expect(caveat).to_have_text(CAVEAT)


def test_uncertain_reading_gets_a_badge_with_its_reason(fake_page):
    page, _ = fake_page
    _read_sample(page)
    badge = page.locator("#uncertain")
    expect(badge).to_be_visible()
    expect(badge.locator(".badge")).to_have_text("Uncertain")
    expect(badge).to_contain_text("2 reasons, listed under the reading")
    reasons = page.locator("#uncertain-reasons li")
    expect(reasons).to_have_count(2)
    expect(reasons.nth(0)).to_have_text(UNSURE)
    expect(reasons.nth(1)).to_have_text(LOW_RES)
    # Near the title, above the X-ray.
    title = page.locator("#title").bounding_box()
    assert title["y"] <= badge.bounding_box()["y"] < page.locator("#xray").bounding_box()["y"]
    # No lesions in this reading: their toggles are off and cannot be turned on.
    for layer in ("lesions", "zones"):
        expect(page.locator(f"#show-{layer}")).to_be_disabled()
        expect(page.locator(f"#layer-{layer}")).to_be_hidden()
    expect(page.locator("#heatmap-method")).to_contain_text("Grad-CAM")
    expect(page.locator("#caveat")).to_have_text(CAVEAT)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_a_certain_reading_has_no_badge(fake_page):
    page, predictor = fake_page
    predictor.uncertain = False
    _read_sample(page)
    expect(page.locator("#title")).to_contain_text("Typical appearance")
    expect(page.locator("#uncertain")).to_be_hidden()
    expect(page.locator("#uncertain-reasons")).to_be_hidden()
    expect(page.locator("#caveat")).to_have_text(CAVEAT)


def test_page_words_a_gate_refusal_for_its_user(page, tmp_path):
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8)).save(noise)
    page.set_input_files("#file", str(noise))
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=TIMEOUT_MS)
    expect(error).to_contain_text("noise.png")
    expect(error).to_contain_text("frontal chest X-rays only")
    expect(error).to_contain_text("covidcxr serve --no-gate")
    assert "use --no-gate" not in error.inner_text()
    expect(page.locator("#result")).to_be_hidden()


def test_api_docs_render_from_this_server_only(browser, server_url):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    requests, csp = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda msg: csp.append(msg.text) if "Content Security Policy" in msg.text else None)
    try:
        page.goto(server_url + "docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("covidcxr", timeout=TIMEOUT_MS)
        expect(page.locator(".swagger-ui .opblock-summary-path").first).to_be_visible()
        assert any(url.endswith("/openapi-3.0.json") for url in requests), requests
        assert all(_local(url) for url in requests), [url for url in requests if not _local(url)]
        assert not csp, csp
    finally:
        context.close()


def test_api_docs_render_with_the_internet_blocked(browser, server_url):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    blocked = []

    def only_local(route):
        if _local(route.request.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", only_local)
    try:
        page.goto(server_url + "docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("covidcxr", timeout=TIMEOUT_MS)
        expect(page.locator(".swagger-ui").get_by_text("/v1/predict", exact=True)).to_be_visible()
        assert not blocked, blocked
    finally:
        context.close()


def test_probability_bars_stay_in_their_column_at_1280_px(browser, server_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server_url)
    _read_sample(page)
    expect(page.locator("#findings")).to_be_visible()
    edges = page.evaluate(
        """() => ({
        bars: [...document.querySelectorAll('#probabilities meter')].map(m => m.getBoundingClientRect().right),
        column: document.querySelector('#probabilities').closest('section').getBoundingClientRect().right,
        findings: document.querySelector('#findings').getBoundingClientRect().left,
        })"""
    )
    context.close()
    assert len(edges["bars"]) == len(CLASSES)
    assert max(edges["bars"]) <= edges["column"] + 0.5 < edges["findings"], edges


def test_empty_heat_map_tile_says_no_lesion_evidence(fake_page):
    page, predictor = fake_page
    predictor.empty_map = True
    page.set_input_files("#file", str(SAMPLE))
    expect(page.locator("#result")).to_be_visible(timeout=TIMEOUT_MS)
    empty = page.locator("#heatmap-empty")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("No lesion evidence found")
    expect(page.locator("#heatmap")).to_be_hidden()  # no black square
    expect(page.locator("#heatmap-method")).to_contain_text("no lesion evidence found")


def test_headline_leads_with_category_and_finding_then_probabilities_then_caveat(fake_page):
    page, predictor = fake_page
    predictor.uncertain = False
    _read_sample(page)
    expect(page.locator("#title")).to_have_text(re.compile(r"^Typical appearance: "))
    expect(page.locator("#finding")).to_have_text("Airspace opacity, geographic extent 3.4 of 8.")
    expect(page.locator("#category-reasons li")).to_have_text(TYPICAL["reasons"])
    reading = page.locator("#reading")
    expect(reading).to_contain_text("P(disease) 71.0%, called at 70.0%")
    expect(reading).to_contain_text("near chance")
    expect(page.locator("#prob-rule")).to_contain_text("at least 70.0% (here 71.0%), not the largest probability")
    expect(page.locator("#cannot-see")).to_contain_text("pleural effusion")
    ys = [page.locator(sel).bounding_box()["y"] for sel in ("#title", "#finding", "#reading", "#caveat", "#xray")]
    assert ys == sorted(ys), ys
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_printed_page_keeps_the_headline_and_drops_the_controls(fake_page):
    page, predictor = fake_page
    _read_sample(page)
    page.emulate_media(media="print")
    for shown in ("#title", "#finding", "#reading", "#uncertain-reasons", "#caveat", "#xray", "#probabilities"):
        expect(page.locator(shown)).to_be_visible()
    for hidden in ("#drop", ".toggles", "details", "footer"):
        expect(page.locator(hidden).first).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.pdf(format="A4")[:4] == b"%PDF"  # headless Chromium prints it
