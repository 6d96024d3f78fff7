"""Issue 29's hostile inputs at full size: memory and time of ``covidcxr predict`` and ``serve`` on each.

Numbers to reach (issue 29):

- a deflated DICOM that inflates to 512 MB and a TIFF with 40,000 IFDs: error rows, max resident
  memory of the whole ``covidcxr predict`` <= 2.5 GB, both within 60 s including model loading;
  on the server the same files answered 4xx with its memory flat within 300 MB;
- 40 uploads dripping one byte a second: a real prediction answered within 40 s, the drips
  refused or timed out;
- kill -9 of a ``--workers 2`` run: no worker alive 5 s later, the same command resumes at once,
  every row exactly once.

Every file is built in a temporary folder (nothing large is committed): the deflated bombs are
deflated as they are written (``tests/hostile_files.py``), the 3 GB file is sparse. Each
``covidcxr predict`` is a child of its own small Python process that reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` once the command has ended, so each case has
its own high-water mark (model loading included); a real X-ray run the same way is the
baseline. The server is ``python -m covidcxr.cli serve`` on a free loopback port; its resident
memory is ``VmRSS`` from ``/proc/PID/status``, sampled every 50 ms.

Usage:
    python benchmarks/hostile_inputs.py --json benchmarks/results/hostile_inputs.json
    python benchmarks/hostile_inputs.py --src ../main/src --skip server kill9   # the same files, another checkout

About 4 minutes on 2 cores (five model loads, the drip round waits out the upload deadline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout under test
sys.path.insert(0, str(ROOT / "tests"))  # the builders of the hostile files

from hostile_files import deflated_dicom, many_ifd_tiff  # noqa: E402

GB = 1e9
XRAY = ROOT / "tests" / "fixtures" / "nih_00000710_003.png"
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
CLI = [sys.executable, "-m", "covidcxr.cli"]
#: Runs a command and prints its wall time and the max resident memory of it and its children.
MEASURE = (
    "import json, resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
    "print(json.dumps({'rc': rc.returncode, 'wall_s': time.perf_counter() - t, "
    "'max_rss_gb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9, 'stderr': rc.stderr[-600:]}))"
)


def build(folder: Path) -> dict[str, Path]:
    """The hostile files of the issue, full size, and a real X-ray for the baseline."""
    files = {"baseline_xray": folder / "xray.png"}
    shutil.copy(XRAY, files["baseline_xray"])
    files["dicom_bomb_512mb_pixels"] = deflated_dicom(folder / "bomb_pixels.dcm", 512 * 2**20, rows=512, cols=512)
    files["dicom_bomb_512mb_header"] = deflated_dicom(
        folder / "bomb_header.dcm", 512 * 512 * 2, junk_bytes=512 * 2**20, rows=512, cols=512
    )
    files["tiff_40000_ifds"] = many_ifd_tiff(folder / "pages.tif", 40_000, side=256)
    big = folder / "backup.png"
    with open(big, "wb") as fh:  # 3 GB, sparse
        fh.write(b"\x00\x01 a disk image, not a picture")
        fh.truncate(3 * 2**30)
    files["file_3gb_not_an_image"] = big
    return files


def predict_case(path: Path, out: Path) -> dict:
    """``covidcxr predict PATH --out OUT -q`` in its own measuring process: rc, wall time, max RSS, the row."""
    cmd = [*CLI, "predict", str(path), "--out", str(out), "-q"]
    done = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=ENV)
    result = json.loads(done.stdout)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    result["rows"] = len(rows)
    result["row"] = rows[0].get("error") or rows[0].get("prediction") if rows else None
    result["file_mb"] = path.stat().st_size / 2**20
    return result


# ---------------------------------------------------------------------------
# The server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GB
    return 0.0


class PeakRss:
    """Peak ``VmRSS`` of a process while the block runs, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def server_cases(files: dict[str, Path], drips: int, drip_wait: float) -> dict:
    with tempfile.TemporaryFile("w+") as log:
        return _server_cases(files, drips, drip_wait, log)


def _server_cases(files: dict[str, Path], drips: int, drip_wait: float, log) -> dict:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], env=ENV, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the server did not start:\n{log.read()[-2000:]}")
            time.sleep(0.5)
        with httpx.Client(timeout=120) as client:
            client.post(
                f"{url}/v1/predict", files={"file": ("warm.png", XRAY.read_bytes())}
            )  # first reading: lazy parts
            out = {"rss_start_gb": _rss(server.pid)}
            for case in ("dicom_bomb_512mb_pixels", "dicom_bomb_512mb_header", "tiff_40000_ifds"):
                before = _rss(server.pid)
                with PeakRss(server.pid) as peak:
                    t = time.perf_counter()
                    r = client.post(f"{url}/v1/predict", files={"file": (files[case].name, files[case].read_bytes())})
                    seconds = time.perf_counter() - t
                out[case] = {
                    "status": r.status_code,
                    "seconds": seconds,
                    "rss_before_gb": before,
                    "rss_peak_gb": peak.peak,
                    "rss_after_gb": _rss(server.pid),
                    "error": r.json().get("error", "")[:200],
                }
        out["drip"] = drip_round(url, server.pid, drips, drip_wait)
        out["rss_end_gb"] = _rss(server.pid)
        return out
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def drip_round(url: str, pid: int, drips: int, wait: float) -> dict:
    """``drips`` connections send an upload one byte a second; meanwhile one real prediction is timed."""
    host, port = url.removeprefix("http://").split(":")
    # A well-formed upload of the real X-ray, which would take days at a byte a second.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="drip.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + XRAY.read_bytes() + b"\r\n--b--\r\n"
    )
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    answers: list[str] = []
    stop = threading.Event()

    def drip() -> None:
        with socket.create_connection((host, int(port))) as s:
            s.sendall(head)
            s.settimeout(1.0)
            for byte in body:
                if stop.is_set():
                    return
                try:
                    s.sendall(bytes([byte]))
                    reply = s.recv(200)
                except TimeoutError:
                    continue
                except OSError as err:  # the server closed the connection
                    answers.append(f"closed ({type(err).__name__})")
                    return
                answers.append(reply.split(b"\r\n", 1)[0].decode(errors="replace") or "closed")
                return

    threads = [threading.Thread(target=drip, daemon=True) for _ in range(drips)]
    for t in threads:
        t.start()
    time.sleep(3)  # every drip connected and started
    with PeakRss(pid) as peak:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/predict", files={"file": ("xray.png", XRAY.read_bytes())}, timeout=300)
        real_s = time.perf_counter() - t0
    deadline = time.monotonic() + wait
    while len(answers) < drips and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return {
        "drips": drips,
        "real_status": r.status_code,
        "real_seconds": real_s,
        "rss_peak_gb": peak.peak,
        "drip_answers": counts,
        "drips_unanswered": drips - len(answers),
    }


# ---------------------------------------------------------------------------
# kill -9 of predict --workers 2


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def kill_case(folder: Path, n: int = 24) -> dict:
    inputs = folder / "kill_in"
    inputs.mkdir()
    for i in range(n):
        shutil.copy(XRAY, inputs / f"cxr{i:02d}.png")
    out = folder / "kill_out"
    cmd = [*CLI, "predict", str(inputs), "--out", str(out), "--workers", "2", "--batch-size", "2", "-q"]
    jsonl = out / "predictions.jsonl"
    run = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (jsonl.is_file() and jsonl.read_text().count("\n") >= 3):
        if run.poll() is not None:
            return {"error": "the run ended before it could be killed"}
        time.sleep(0.2)
    workers = _children(run.pid)
    rows_at_kill = jsonl.read_text().count("\n")
    run.kill()
    run.wait()
    t = time.perf_counter()
    while any(_alive(p) for p in workers) and time.perf_counter() - t < 5:
        time.sleep(0.05)
    gone_s = time.perf_counter() - t
    alive_after_5s = sum(_alive(p) for p in workers)
    t = time.perf_counter()
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    paths = [json.loads(line)["path"] for line in jsonl.read_text().splitlines()]
    return {
        "inputs": n,
        "workers_seen": len(workers),
        "rows_at_kill": rows_at_kill,
        "workers_gone_after_s": gone_s,
        "workers_alive_after_5s": alive_after_5s,
        "rerun_rc": again.returncode,
        "rerun_refused_busy": "in use by another run" in again.stderr,
        "rerun_s": time.perf_counter() - t,
        "rows": len(paths),
        "distinct_rows": len(set(paths)),
        "every_row_once": sorted(paths) == sorted(str(p) for p in inputs.iterdir()),
    }


def verdict(r: dict) -> dict[str, bool]:
    bombs = ("dicom_bomb_512mb_pixels", "dicom_bomb_512mb_header", "tiff_40000_ifds", "file_3gb_not_an_image")
    srv = r["server"]
    return {
        "predict_bombs_error_rows": all(r["predict"][c]["rows"] == 1 and r["predict"][c]["rc"] == 2 for c in bombs),
        "predict_bombs_rss_le_2.5gb": all(r["predict"][c]["max_rss_gb"] <= 2.5 for c in bombs),
        "predict_bombs_within_60s": all(r["predict"][c]["wall_s"] <= 60 for c in bombs),
        "server_bombs_4xx": all(400 <= srv[c]["status"] < 500 for c in bombs[:3]),
        "server_memory_flat_300mb": all(srv[c]["rss_peak_gb"] - srv[c]["rss_before_gb"] <= 0.3 for c in bombs[:3]),
        "drip_real_prediction_within_40s": srv["drip"]["real_status"] == 200 and srv["drip"]["real_seconds"] <= 40,
        "drips_refused_or_timed_out": srv["drip"]["drips_unanswered"] == 0,
        "kill9_no_worker_after_5s": r["kill9"].get("workers_alive_after_5s", 1) == 0,
        "kill9_resumes_every_row_once": bool(r["kill9"].get("every_row_once"))
        and not r["kill9"].get("rerun_refused_busy"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--drips", type=int, default=40, help="dripping connections (default 40)")
    parser.add_argument(
        "--drip-wait",
        type=float,
        default=75,
        help="seconds to wait for the drips' answers (default 75: past the 60 s deadline)",
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=ROOT / "src",
        help="the covidcxr sources the commands run (default: this checkout's; another checkout's src/ gives a before)",
    )
    parser.add_argument(
        "--skip", nargs="*", default=(), choices=("predict", "server", "kill9"), help="parts to leave out"
    )
    args = parser.parse_args()
    ENV["PYTHONPATH"] = f"{args.src.resolve()}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    results: dict = {
        "src": str(args.src.resolve()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()},
    }
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        files = build(folder)
        results["build_s"] = time.perf_counter() - t
        results["files_mb"] = {k: p.stat().st_size / 2**20 for k, p in files.items()}
        if "predict" not in args.skip:
            results["predict"] = {}
            for case, path in files.items():
                results["predict"][case] = predict_case(path, folder / f"out_{case}")
                print(
                    case, json.dumps({k: v for k, v in results["predict"][case].items() if k != "stderr"}), flush=True
                )
        if "server" not in args.skip:
            results["server"] = server_cases(files, args.drips, args.drip_wait)
            print("server", json.dumps(results["server"]), flush=True)
        if "kill9" not in args.skip:
            results["kill9"] = kill_case(folder)
            print("kill9", json.dumps(results["kill9"]), flush=True)
    results["machine"]["load_end"] = os.getloadavg()
    if not args.skip:
        results["verdict"] = verdict(results)
        results["pass"] = all(results["verdict"].values())
        print(json.dumps(results["verdict"], indent=1), "PASS" if results["pass"] else "FAIL")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if results.get("pass", True) else 1


if __name__ == "__main__":
    sys.exit(main())
