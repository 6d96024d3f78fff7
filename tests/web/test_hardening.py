"""Issue 17: hostile file names, bad ``--out``, bad weights, two writers, symlink loops, server admission.

The models are replaced by :class:`FakePredictor` (same interface, no weights), so that every
test here runs in seconds; what is tested is the plumbing around them: reports, rows, locks,
globs, the CLI's messages and the server's admission control. Subprocess tests run the real
command line (``python -m covidcxr.cli``), whose stderr shows any traceback a user would see.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.exceptions import HTTPException

from covidcxr import batch
from covidcxr.batch import LOCK_NAME, OutputBusyError, expand_inputs, output_lock, unique_stems
from covidcxr.cli import main
from covidcxr.infer import Predictor, Result
from covidcxr.report import plain_text, save_report
from covidcxr.web import create_app
from covidcxr.web.app import UploadLimit

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"

#: File names an adversarial user would try: math text, backslashes, braces, control characters,
#: a right-to-left override, a name of 250 bytes (the stem plus "_heatmap.png" would pass 255).
HOSTILE = [
    "a$x^{$.png",
    "$$\\frac{1}{0}$$.png",
    "back\\slash.png",
    "{}{{{.png",
    "ctl\x01\x07\x1b[31m.png",
    "line\nbreak.png",
    "\u202eevil.png",
    "%s%n%x.png",
    "x" * 246 + ".png",
    "$" * 40 + "{" * 200 + ".png",
]


class FakePredictor:
    """The :class:`covidcxr.infer.Predictor` interface without models: a centred box as lungs, fixed probabilities.

    Args:
        delay: seconds each ``run`` call sleeps (to make runs overlap).
    """

    models = {"lungs": {"name": "fake", "sha256": "0" * 64}}

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def run(self, images: list[np.ndarray]) -> list[Result]:
        self.calls += 1
        time.sleep(self.delay)
        out = []
        for im in images:
            mask = np.zeros(im.shape, bool)
            mask[im.shape[0] // 5 : -im.shape[0] // 5, im.shape[1] // 5 : -im.shape[1] // 5] = True
            out.append(
                Result(
                    probabilities={"COVID-19": 0.2, "Other pneumonia": 0.3, "No finding": 0.5},
                    prediction="No finding",
                    gate_probability=0.9,
                    saliency_in_lungs=0.5,
                    model=self.models,
                    lung_mask=mask,
                    heatmap=im,
                )
            )
        return out


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


XRAY = _png((np.random.default_rng(0).random((96, 80)) * 255).astype(np.uint8))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _cli(*args: str, fake_delay: float | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m covidcxr.cli ARGS``, with :class:`FakePredictor` as the models when ``fake_delay`` is given."""
    code = "import sys; from covidcxr.cli import main; sys.exit(main(sys.argv[1:]))"
    if fake_delay is not None:
        code = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); from test_hardening import FakePredictor; from covidcxr.infer import Predictor; "
            f"Predictor.load = staticmethod(lambda **_: FakePredictor({fake_delay})); " + code
        )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env)


# ---------------------------------------------------------------------------
# Item 1: hostile file names in the report, the batch and the server


def test_plain_text_escapes_what_matplotlib_cannot_draw():
    assert plain_text("a$x^{$.png") == "a$x^{$.png"  # drawn with parse_math=False: the dollars stay
    assert plain_text("ctl\x01\x1b.png") == "ctl\\x01\\x1b.png"
    assert plain_text("bad\udcff.png") == "bad\\udcff.png"
    long = plain_text("x" * 500 + ".png")
    assert len(long) == 110 and long.endswith("x.png") and "\u2026" in long


@pytest.mark.parametrize("name", [*HOSTILE, "bad\udcff.png"], ids=range(len(HOSTILE) + 1))
def test_report_draws_any_file_name(tmp_path, name):
    image = np.random.default_rng(1).random((120, 100)).astype(np.float32)
    result = FakePredictor().run([image])[0]
    result.path, result.warnings = name, [name]
    save_report(tmp_path / "r.png", image, result)
    assert Image.open(tmp_path / "r.png").size[0] > 400


def test_predict_hostile_names_every_row_written_and_no_traceback(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    names = [*HOSTILE, os.fsdecode(b"latin1-\xe9.png")]  # not UTF-8: a surrogate in Python
    for name in names:
        (inp / name).write_bytes(XRAY)
    out = tmp_path / "out"
    run = _cli("predict", str(inp), "--out", str(out), "-q", fake_delay=0)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    rows = _rows(out)
    assert len(rows) == len(names) and not [r for r in rows if "error" in r]
    assert all(Path(r["report"]).is_file() and Path(r["heatmap"]).is_file() for r in rows)
    assert all(len(os.fsencode(Path(r["heatmap"]).name)) <= 255 for r in rows)


def test_a_failure_writing_one_input_is_its_error_row_and_the_batch_goes_on(tmp_path, monkeypatch, capsys):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(XRAY)
    real = save_report

    def flaky(path, *args, **kwargs):
        if "b_report" in str(path):
            raise OSError(28, "No space left on device")
        real(path, *args, **kwargs)

    monkeypatch.setattr("covidcxr.predict.save_report", flaky)
    monkeypatch.setattr(Predictor, "load", staticmethod(lambda **_: FakePredictor()))
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "a.png"),
                str(tmp_path / "b.png"),
                str(tmp_path / "c.png"),
                "--out",
                str(out),
                "-q",
            ]
        )
        == 2
    )
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {"a.png", "b.png", "c.png"}
    assert "error" not in rows["a.png"] and "error" not in rows["c.png"]
    assert (
        "b.png" in rows["b.png"]["error"]
        and "No space left" in rows["b.png"]["error"]
        and "--retry-errors" in rows["b.png"]["error"]
    )
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture()
def client():
    with TestClient(create_app(FakePredictor(), allowed_hosts=["testserver"])) as c:
        yield c


def test_serve_hostile_names_answer_200_and_leave_no_figure_open(client):
    import matplotlib.pyplot as plt

    for name in [*HOSTILE, "y" * 1000 + ".png", "C:\\Users\\$x^{$.png"]:  # no file system limits the name of an upload
        r = client.post("/v1/predict", files={"file": (name, XRAY, "image/png")})
        assert r.status_code == 200, (name, r.text)
        assert r.json()["report"]["png_base64"]
    assert plt.get_fignums() == []


# ---------------------------------------------------------------------------
# Item 6: user errors get one sentence, before the models load


def test_bad_out_and_bad_weights_are_one_sentence_without_traceback(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    image = tmp_path / "x.png"
    image.write_bytes(XRAY)
    bad = tmp_path / "bad"
    bad.mkdir()
    spec = json.loads((SRC / "covidcxr" / "weights" / "frontal_cxr_gate.json").read_text())
    (bad / "w.pt").write_bytes(b"\x80\x04not a state dict")
    from covidcxr.specs import sha256_file

    (bad / "gate.json").write_text(json.dumps({**spec, "file": "w.pt", "sha256": sha256_file(bad / "w.pt")}))
    cases = {
        "--out is a file": (["--out", str(a_file)], "is a file, not a folder"),
        "--out under a file": (["--out", str(a_file / "sub")], "a part of the path is a file"),
        "--out in /sys": (["--out", "/sys/covidcxr-test-out"], "cannot write there"),
        "--out /sys itself": (["--out", "/sys"], "cannot write there"),
        "weights no state dict": (
            ["--out", str(tmp_path / "o"), "--gate-weights", str(bad / "gate.json")],
            "w.pt: not a PyTorch state dict",
        ),
    }
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        cases["--out read-only"] = (["--out", str(ro)], "cannot write there")
    # One process runs every case, as a user would one after the other: a traceback in any shows in its stderr.
    argvs = [["predict", str(image), *args, "-q"] for args, _ in cases.values()]
    code = (
        "import sys, json, time; from covidcxr.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    t = time.perf_counter(); rc = main(argv); print(f'@@ {rc} {time.perf_counter() - t:.2f}', file=sys.stderr, flush=True)"
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(argvs)], capture_output=True, text=True, timeout=120, env=env
    )
    assert "Traceback" not in run.stderr, run.stderr
    # stderr: OUTPUT1 "@@ rc s" OUTPUT2 "@@ rc s" ...: each chunk after the first opens with the previous case's result line.
    chunks = run.stderr.split("@@ ")
    assert run.returncode == 0 and len(chunks) == len(cases) + 1, run.stderr
    said = [chunks[0], *(c.split("\n", 1)[1] for c in chunks[1:-1])]
    results = [c.split("\n", 1)[0].split() for c in chunks[1:]]
    for (what, (_, words)), output, (rc, seconds) in zip(cases.items(), said, results):
        lines = output.strip().splitlines()
        assert rc == "2" and len(lines) == 1 and lines[0].startswith("error: "), (what, output)
        assert words in lines[0] and "weights_only=False" not in lines[0], (what, lines[0])
        if "--out" in what:  # said before any model loads
            assert float(seconds) < 1.0, (what, seconds)


# ---------------------------------------------------------------------------
# Item 4: one writer per output folder


def test_output_lock_is_exclusive_and_names_the_holder(tmp_path):
    with output_lock(tmp_path):
        assert str(os.getpid()) in (tmp_path / LOCK_NAME).read_text()
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"), output_lock(tmp_path):
            pass
    with output_lock(tmp_path):  # released: a later run takes it
        pass


def test_two_concurrent_writers_lose_and_duplicate_no_row(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    n = 20
    for i in range(n):
        (inp / f"x{i:02d}.png").write_bytes(XRAY)
    (inp / "broken.png").write_bytes(b"not an image")  # an error row, for --retry-errors
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); from test_hardening import FakePredictor; from covidcxr.infer import Predictor; "
        # 0.12 s a reading: slow enough that the second run starts while the first writes, also on a busy machine
        "Predictor.load = staticmethod(lambda **_: FakePredictor(0.12)); from covidcxr.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code, "predict", str(inp), "--out", str(out), "-q", "--batch-size", "1", "--no-report"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not ((out / "predictions.jsonl").is_file() and (out / "predictions.jsonl").read_text().count("\n") >= 3):
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended before it could overlap"
        time.sleep(0.05)
    second = _cli("predict", str(inp), "--out", str(out), "-q", "--retry-errors", "--no-report", fake_delay=0.05)
    first_err = first.communicate(timeout=60)[1]
    assert first.returncode == 2, first_err  # the broken file
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr and "another --out" in second.stderr, (
        second.stderr
    )
    assert "Traceback" not in second.stderr + first_err
    third = _cli(
        "predict", str(inp), "--out", str(out), "-q", "--retry-errors", "--no-report", fake_delay=0
    )  # after it: retries the error only
    assert third.returncode == 2, third.stderr
    paths = [r["path"] for r in _rows(out)]
    assert len(paths) == len(set(paths)) == n + 1  # none lost, none twice


# ---------------------------------------------------------------------------
# Item 5: symlink loops


@pytest.mark.timeout(20)
def test_globs_and_folders_do_not_follow_symlink_loops(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("d/sub").mkdir(parents=True)
    Path("d/x.jpg").write_bytes(XRAY)
    os.symlink("..", "d/sub/l1")
    os.symlink("..", "d/sub/l2")
    Path("elsewhere").mkdir()
    Path("elsewhere/y.jpg").write_bytes(XRAY)
    os.symlink("../elsewhere", "d/linked")  # a linked folder is still searched, once
    for inputs in (["d/**/*.jpg"], ["d"], ["d/**"], ["d/x.jpg", "d/sub/l1/x.jpg", "d/**/*.jpg", "elsewhere/y.jpg"]):
        files, errors = expand_inputs(inputs)
        assert files == ["d/linked/y.jpg", "d/x.jpg"] or files == ["d/x.jpg", "d/linked/y.jpg"], (inputs, files)
        assert errors == []


def test_long_stems_are_cut_to_fit_a_file_name():
    stems = unique_stems(["a/" + "é" * 200 + ".png", "b/" + "é" * 200 + ".jpg", "c/short.png"])
    assert len(stems[0].encode()) == batch.MAX_STEM_BYTES and stems[1] == stems[0] + "-2" and stems[2] == "short"
    assert all(len(f"{s}_heatmap.png".encode()) <= 255 for s in stems)


# ---------------------------------------------------------------------------
# Items 2, 3, 7: the server's admission control


def test_host_origin_security_headers_and_several_files(client):
    ok = client.get("/health")
    assert ok.status_code == 200
    for header, value in (("x-content-type-options", "nosniff"), ("x-frame-options", "DENY")):
        assert ok.headers[header] == value
    assert "frame-ancestors 'none'" in ok.headers["content-security-policy"]
    assert client.get("/nowhere").headers["x-content-type-options"] == "nosniff"
    assert client.get("/health", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    r = client.post("/v1/predict", files={"file": ("x.png", XRAY)}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "another origin" in r.json()["error"]
    assert (
        client.post("/v1/predict", files={"file": ("x.png", XRAY)}, headers={"Origin": "http://testserver"}).status_code
        == 200
    )
    r = client.post("/v1/predict", files=[("file", ("a.png", XRAY)), ("file", ("b.png", XRAY))])
    assert r.status_code == 422 and "several" in r.json()["error"]


def test_default_hosts_are_the_loopback_names():
    with TestClient(create_app(FakePredictor()), base_url="http://localhost:8000") as c:
        assert c.get("/health").status_code == 200
    with TestClient(create_app(FakePredictor())) as c:  # "testserver" is not a loopback name
        assert c.get("/health").status_code == 400


def test_images_over_max_pixels_are_refused_from_the_header_with_413():
    with TestClient(create_app(FakePredictor(), allowed_hosts=["testserver"], max_pixels=5000)) as c:
        r = c.post("/v1/predict", files={"file": ("big.png", XRAY)})
        assert r.status_code == 413 and "--max-pixels" in r.json()["error"]


def test_a_full_queue_answers_503_with_retry_after_and_the_rest_are_served():
    fake = FakePredictor(delay=0.3)
    with TestClient(create_app(fake, allowed_hosts=["testserver"], max_queue=1)) as c, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: c.post("/v1/predict", files={"file": (f"x{i}.png", XRAY)}), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503} and codes.count(200) >= 2, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["error"]
    assert fake.calls == codes.count(200)


def test_predictions_run_one_at_a_time_in_one_thread():
    threads = set()

    class Recording(FakePredictor):
        def run(self, images):
            threads.add(threading.current_thread().name)
            return super().run(images)

    with (
        TestClient(create_app(Recording(delay=0.02), allowed_hosts=["testserver"])) as c,
        ThreadPoolExecutor(4) as pool,
    ):
        assert {
            r.status_code for r in pool.map(lambda i: c.post("/v1/predict", files={"file": ("x.png", XRAY)}), range(8))
        } == {200}
    assert len(threads) == 1 and threads.pop().startswith("covidcxr-models")


def test_a_stalled_upload_gets_408():
    async def inner(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    async def stalls():
        if not hasattr(stalls, "sent"):
            stalls.sent = True
            return {"type": "http.request", "body": b"x", "more_body": True}
        await anyio.sleep(10)

    async def go():
        scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}
        await UploadLimit(inner, max_body=100, message="too large", read_timeout=0.1)(scope, stalls, None)

    with pytest.raises(HTTPException) as err:
        anyio.run(go)
    assert err.value.status_code == 408


def test_serve_allowed_hosts_are_loopback_plus_host_and_extras():
    from covidcxr.cli import allowed_hosts

    assert allowed_hosts("127.0.0.1", None) == ["localhost", "127.0.0.1", "::1"]
    assert allowed_hosts("0.0.0.0", ["Scanner.Lan", "[fe80::1]"]) == [
        "localhost",
        "127.0.0.1",
        "::1",
        "scanner.lan",
        "fe80::1",
    ]
    assert "10.0.0.5" in allowed_hosts("10.0.0.5", None)


def test_an_upload_never_touches_the_disk(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with TestClient(create_app(FakePredictor(), allowed_hosts=["testserver"])) as c:
        r = c.post("/v1/predict", files={"file": ("x.png", XRAY)})
    assert r.status_code == 200 and r.json()["lung_mask"]["png_base64"]
    assert list(tmp_path.iterdir()) == []
