"""``covidcxr predict --engine ray``: the same rows as the local engine, option checks, the Parquet copy.

The integration tests start a Ray cluster on this machine (seconds) and load the models in two
actors; CI runs them with ``-m integration``. The rest is fast and needs no Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from covidcxr.batch import read_predictions
from covidcxr.cli import main
from covidcxr.raydata import RayRows, write_parquet

XRAYS = ("nih_00000710_003.png", "kermany_IM-0117-0001.jpeg", "ieee8023_2cd63b76.jpg")
FAST = ("-q", "--no-saliency", "--no-report")
N_IMAGES = 20


def _rows(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "an input has two rows"
    return by_path


def _flat(value, key=()):
    """Nested dicts and lists -> {key path: leaf}."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _flat(item, (*key, name)).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, (*key, i)).items()}
    return {key: value}


def assert_same_rows(a_out: Path, b_out: Path, files: tuple[str, ...] = ("lung_mask",)) -> None:
    """Both folders hold the same rows: numbers within 1e-5, text equal, the named PNGs pixel for pixel."""
    a, b = _rows(a_out), _rows(b_out)
    assert a.keys() == b.keys()
    for path, ra in a.items():
        rb = b[path]
        assert ra.keys() == rb.keys(), path
        fa, fb = _flat(ra), _flat(rb)
        for key, va in fa.items():
            vb = fb[key]
            if key[0] in ("lung_mask", "heatmap", "report"):
                assert (va is None) == (vb is None) and (va is None or Path(va).name == Path(vb).name), (path, key)
            elif isinstance(va, float):
                assert vb == pytest.approx(va, abs=1e-5, nan_ok=True), (path, key)
            else:
                assert va == vb, (path, key)
        for key in files:
            if ra.get(key):
                assert np.array_equal(np.asarray(Image.open(ra[key])), np.asarray(Image.open(rb[key]))), (path, key)


@pytest.fixture()
def archive(tmp_path, fixtures) -> Path:
    """in/: 20 fixture X-rays with small variations (flips, crops, contrast, size, format), and 3 unreadable files."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(N_IMAGES):
        im = Image.open(fixtures / XRAYS[k % 3]).convert("L")
        if k // 3 % 2:
            im = ImageOps.mirror(im)
        w, h = im.size
        m = 4 * (k % 5)
        im = im.crop((m, m // 2, w - m // 2, h - m))
        im = im.point(lambda v, g=0.8 + 0.05 * (k % 7): round(255 * (v / 255) ** g))
        im = im.resize((int(im.width * (0.6 + 0.05 * (k % 6))), int(im.height * (0.6 + 0.05 * (k % 6)))))
        im.save(folder / f"cxr{k:02d}.{'png' if k % 2 else 'jpg'}")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "truncated.jpg").write_bytes((fixtures / XRAYS[2]).read_bytes()[:300])
    Image.fromarray(np.full((300, 300), 7, np.uint8)).save(folder / "blank.png")  # refused: blank
    return folder


def _inputs(archive: Path) -> list[str]:
    """The folder, a missing file and a pattern that matches nothing: error rows of the driver's own."""
    return [str(archive), str(archive.parent / "gone.png"), str(archive.parent / "nothing" / "*.dcm")]


# -- fast: no Ray needed ------------------------------------------------------------------------


def test_help_and_the_local_engine_do_not_import_ray(tmp_path, fixtures):
    code = (
        "import sys\n"
        "from covidcxr.cli import build_parser, main\n"
        "build_parser().format_help()\n"
        f"assert main(['predict', {str(fixtures / XRAYS[0])!r}, '--out', {str(tmp_path / 'out')!r}, "
        "'-q', '--no-saliency', '--no-report', '--no-severity']) == 0\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    env = os.environ | {"MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(_rows(tmp_path / "out")) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "auto"], "--address only work with --engine ray"),
        (["--num-workers", "2"], "--num-workers only work with --engine ray"),
        (["--engine", "ray", "--workers", "2"], "--workers is for --engine local"),
        (["--engine", "ray", "--num-workers", "0"], "--num-workers must be at least 1"),
        (["--engine", "ray", "--gpus-per-worker", "1", "--backend", "onnxruntime"], "leave out --backend onnxruntime"),
    ],
)
def test_engine_options_that_do_not_go_together_are_one_sentence(args, message, tmp_path, capsys):
    assert main(["predict", "x.png", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_without_ray_the_ray_engine_says_what_to_install(monkeypatch, tmp_path, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    assert main(["predict", "x.png", "--out", str(tmp_path / "out"), "--engine", "ray"]) == 2
    assert "pip install 'covidcxr[ray]'" in capsys.readouterr().err


def test_nothing_to_do_starts_no_cluster(tmp_path):
    assert list(RayRows({})([], [], tmp_path, report=False)) == []
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_parquet_copy_holds_every_row_with_the_union_of_the_columns(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    probs = {"COVID-19": 0.25, "Other pneumonia": 0.5, "No finding": 0.25}
    rows = [
        {"path": "a.png", "error": "a.png: not an image"},
        {"path": "b.png", "probabilities": probs, "prediction": "Other pneumonia", "heatmap": None, "warnings": []},
        {"path": "c.png", "error": "c.png: a lateral view", "refusal_reason": "lateral"},
    ]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = pq.read_table(write_parquet(tmp_path / "predictions.jsonl"))
    assert table.column_names == [
        "path",
        "error",
        "probabilities",
        "prediction",
        "heatmap",
        "warnings",
        "refusal_reason",
    ]
    back = table.to_pylist()
    assert [r["path"] for r in back] == ["a.png", "b.png", "c.png"]
    assert back[1]["probabilities"] == probs and back[0]["probabilities"] is None
    assert (
        back[2]["refusal_reason"] == "lateral" and str(table.schema.field("warnings").type) == "list<element: string>"
    )


# -- integration: a Ray cluster on this machine --------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """One Ray cluster for the module's in-process runs (the CLI joins a session already open)."""
    pytest.importorskip("ray")
    import ray

    from covidcxr.raydata import connect

    assert connect(None)
    yield
    ray.shutdown()


def _predict(*args) -> int:
    return main(["predict", *map(str, args)])


@pytest.mark.integration
def test_ray_rows_match_the_local_rows(cluster, archive, tmp_path, capsys):
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    assert _predict(*_inputs(archive), "--out", local, *FAST) == 2
    local_err = capsys.readouterr().err.splitlines()
    assert _predict(*_inputs(archive), "--out", ray_out, *FAST, "--engine", "ray", "--num-workers", 2, "--parquet") == 2
    ray_err = capsys.readouterr().err.splitlines()
    assert (
        ray_err[-1].split(" images/s")[0].rsplit(", ", 1)[0] == local_err[-1].split(" images/s")[0].rsplit(", ", 1)[0]
    )
    assert any(line.startswith("ray: 2 workers") for line in ray_err), ray_err
    assert sorted(line for line in ray_err if line.startswith("error: ")) == sorted(
        line for line in local_err if line.startswith("error: ")
    )
    assert_same_rows(local, ray_out)
    rows = _rows(ray_out)
    assert len(rows) == N_IMAGES + 5
    errors = {Path(p).name: r["error"] for p, r in rows.items() if "error" in r}
    assert set(errors) == {"broken.png", "truncated.jpg", "blank.png", "gone.png", "*.dcm"}
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(ray_out / "predictions.parquet").column("path").to_pylist()) == sorted(rows)


@pytest.mark.integration
def test_ray_outputs_match_the_local_outputs(cluster, archive, tmp_path):
    files = [archive / "cxr00.jpg", archive / "cxr01.png", archive / "cxr05.png"]
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    assert _predict(*files, "--out", local, "-q") == 0
    assert _predict(*files, "--out", ray_out, "-q", "--engine", "ray", "--num-workers", 2) == 0
    assert_same_rows(local, ray_out, files=("lung_mask", "heatmap"))
    for row in _rows(ray_out).values():
        assert Path(row["heatmap"]).is_file() and Path(row["report"]).is_file()


@pytest.mark.integration
def test_ray_resumes_and_skips_what_is_done(cluster, archive, tmp_path, capsys):
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert _predict(*_inputs(archive), "--out", whole, *FAST) == 2
    first = sorted(archive.glob("cxr0*"))  # 10 of the 20
    assert _predict(*first, "--out", out, *FAST, "--engine", "ray", "--num-workers", 2) == 0
    before = (out / "predictions.jsonl").read_text()
    capsys.readouterr()
    assert _predict(*_inputs(archive), "--out", out, *FAST, "--engine", "ray", "--num-workers", 2) == 2
    assert "10 skipped (already in predictions.jsonl)" in capsys.readouterr().err
    assert (out / "predictions.jsonl").read_text().startswith(before)
    assert_same_rows(whole, out)  # names too: a resumed run names its files as one whole run does
    assert _predict(*_inputs(archive), "--out", out, *FAST, "--engine", "ray") == 2  # nothing left: no cluster needed
    assert len(_rows(out)) == N_IMAGES + 5


@pytest.mark.integration
def test_a_killed_ray_run_is_repaired_and_finished_by_the_local_engine(archive, tmp_path):
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("ray")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _predict(*_inputs(archive), "--out", whole, *FAST) == 2
    cmd = [sys.executable, "-m", "covidcxr.cli", "predict", *_inputs(archive), "--out", str(killed), *FAST]
    proc = subprocess.Popen([*cmd, "--engine", "ray", "--num-workers", "2", "--batch-size", "2"], env=os.environ.copy())
    jsonl = killed / "predictions.jsonl"
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if jsonl.is_file() and "probabilities" in jsonl.read_text():  # the actors' first rows are in
                break
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ray's processes share the fate of the run that started them (its dashboard agent notices within a minute).
    deadline = time.monotonic() + 150
    while (alive := [p for p in children if _running(p, psutil)]) and time.monotonic() < deadline:
        time.sleep(1)
    for p in alive:
        p.kill()
    assert not alive, f"Ray processes outlived the killed run: {alive}"
    done = len(jsonl.read_text().splitlines())
    assert 0 < done < N_IMAGES + 5, "the run was not killed midway"
    with open(jsonl, "a") as fh:
        fh.write('{"path": "' + str(archive / "cxr19.png")[:20])  # and killed while writing a row
    assert len(read_predictions(jsonl).stems) < N_IMAGES  # the local engine's repair accepts the file
    assert _predict(*_inputs(archive), "--out", killed, *FAST) == 2
    assert_same_rows(whole, killed)


def _running(process, psutil) -> bool:
    """Alive and not a zombie (a zombie holds nothing; reaping it is its parent's job)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_ray_summary_gives_each_workers_rate_and_their_sum():
    from covidcxr.cli.inference import ray_summary
    from covidcxr.raydata import WorkerStats

    rows = RayRows({}, startup_seconds=4.25)
    rows.workers = {"a": WorkerStats(12, 3.0), "b": WorkerStats(9, 3.0)}
    assert ray_summary(rows).startswith("ray: 2 workers, 4.0 + 3.0 = 7.0 images/s while busy")
    rows.workers = {str(i): WorkerStats(10 + i, 2.0) for i in range(10)}
    assert "5.0 to 9.5 each, 72.5 images/s together" in ray_summary(rows)
