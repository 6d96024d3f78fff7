"""Issue 29 on the server: bombs answered 4xx, dripping uploads hold no queue place and meet a total deadline,
and a client that hangs up before its turn costs no reading.

The ASGI app is driven directly (no sockets): each request is a ``receive`` that hands out the
body as a client would, slowly or not at all.
"""

from __future__ import annotations

import threading

import anyio
import pytest
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException
from test_hardening import XRAY, FakePredictor

from covidcxr.web import create_app
from covidcxr.web.guards import UploadLimit
from hostile_files import deflated_dicom, many_ifd_tiff

BOUNDARY = "hostileboundary"


def _multipart(name: str, data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def _scope() -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def _request(app, receive) -> tuple[int, bytes]:
    """One request through the ASGI app: (status, body)."""
    status, body = 0, b""

    async def send(message: dict) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    await app(_scope(), receive, send)
    return status, body


def _whole(body: bytes, then_hang_up: bool = False):
    """A client that sends ``body`` at once, then waits for the answer (or hangs up at once)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if not then_hang_up:
            await anyio.sleep_forever()
        return {"type": "http.disconnect"}

    return receive


def _drip(body: bytes, every: float):
    """A client that sends ``body`` one byte every ``every`` seconds."""
    at = 0

    async def receive() -> dict:
        nonlocal at
        if at:
            await anyio.sleep(every)
        if at >= len(body):
            await anyio.sleep_forever()
        at += 1
        return {"type": "http.request", "body": body[at - 1 : at], "more_body": at < len(body)}

    return receive


def test_dripping_uploads_hold_no_queue_place():
    fake = FakePredictor()
    app = create_app(fake, allowed_hosts=["testserver"], max_queue=0, read_timeout=5, upload_timeout=30)
    body = _multipart("x.png", XRAY)
    answers: dict[str, int] = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(5):  # more drips than queue places (one)
                tg.start_soon(_request, app, _drip(body, 0.5))
            await anyio.sleep(0.3)
            answers["real"] = (await _request(app, _whole(body)))[0]
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert answers["real"] == 200 and fake.calls == 1


def test_an_upload_must_arrive_within_the_total_deadline():
    async def inner(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    async def go():
        limit = UploadLimit(inner, max_body=10**6, message="too large", read_timeout=1.0, upload_timeout=0.4)
        with anyio.fail_after(5):
            await limit(_scope(), _drip(b"x" * 1000, 0.05), None)  # never stalls 1 s, never finishes

    with pytest.raises(HTTPException) as err:
        anyio.run(go)
    assert err.value.status_code == 408 and "did not arrive within 0.4 s" in err.value.detail


def test_a_client_that_hangs_up_before_its_turn_is_dropped():
    entered, release = threading.Event(), threading.Event()

    class Blocking(FakePredictor):
        def run(self, images):
            entered.set()
            release.wait(10)
            return super().run(images)

    fake = Blocking()
    app = create_app(fake, allowed_hosts=["testserver"])
    body = _multipart("x.png", XRAY)
    answers: dict[str, int] = {}

    async def first() -> None:
        answers["first"] = (await _request(app, _whole(body)))[0]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            while not entered.is_set():  # the first reading holds the model thread
                await anyio.sleep(0.01)
            answers["gone"] = (await _request(app, _whole(body, then_hang_up=True)))[0]
            release.set()

    anyio.run(main)
    assert answers == {"first": 200, "gone": 499} and fake.calls == 1


def test_bombs_are_answered_4xx(tmp_path):
    bomb = deflated_dicom(tmp_path / "bomb.dcm", 32 * 2**20).read_bytes()
    tiff = many_ifd_tiff(tmp_path / "pages.tif", 3000).read_bytes()
    with TestClient(create_app(FakePredictor(), allowed_hosts=["testserver"])) as c:
        r = c.post("/v1/predict", files={"file": ("bomb.dcm", bomb)})
        assert r.status_code == 422 and "pixel data length disagrees" in r.json()["error"]
        r = c.post("/v1/predict", files={"file": ("pages.tif", tiff)})
        assert r.status_code == 422 and "multi-page TIFF" in r.json()["error"]
        assert c.post("/v1/predict", files={"file": ("x.png", XRAY)}).status_code == 200


def test_a_body_that_completes_while_the_queue_is_full_gets_503():
    entered, release = threading.Event(), threading.Event()

    class Blocking(FakePredictor):
        def run(self, images):
            entered.set()
            release.wait(10)
            return super().run(images)

    app = create_app(Blocking(), allowed_hosts=["testserver"], max_queue=0)
    answers: dict[str, tuple[int, bytes]] = {}

    async def late() -> None:  # arrives first, when the queue is empty, and completes once it is full
        answers["late"] = await _request(app, _drip(_multipart("x.png", XRAY[:200]), 0.01))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(late)
            await anyio.sleep(0.2)
            tg.start_soon(_request, app, _whole(_multipart("x.png", XRAY)))
            while not entered.is_set() or "late" not in answers:
                await anyio.sleep(0.02)
            release.set()

    anyio.run(main)
    status, body = answers["late"]
    assert status == 503 and b"the server is busy" in body
