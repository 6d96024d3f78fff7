"""The web page of ``covidcxr serve`` end to end: uvicorn on a free port, Debian's headless Chromium via Playwright.

Uses the system browser (``apt-get install chromium``), never Playwright's own download.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from covidcxr.cli import SAMPLE
from covidcxr.data.classification import CLASSES
from covidcxr.web import create_app

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


@pytest.fixture(scope="module")
def server_url():
    """The real app (shipped models) served by uvicorn from a background thread on a free localhost port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # handed to uvicorn already bound: no race for the port
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start; see the log above")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


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
