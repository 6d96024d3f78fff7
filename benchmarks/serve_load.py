"""``covidcxr serve`` under load and hostile uploads: latency at 1, 10 and 100 clients, resident memory.

Issue 17: "100 concurrent clients: every request answered or refused with 503; answers leave as
they finish: the fastest within 2 s and the median at most 0.6 x the slowest"; "20 concurrent
9999x9999 uploads: resident memory <= 2.5 GB throughout"; latency p50/p95/max and throughput
at 1, 10 and 100 clients, and the server's memory before and after.

The server is the real command line, ``python -m covidcxr.cli serve --host 127.0.0.1 --port
PORT`` (its own defaults: --max-queue 32, --max-pixels 36,000,000), a child process on a free
loopback port, so its resident memory is its own: ``VmRSS`` of ``/proc/PID/status`` sampled
every 50 ms, and ``VmHWM`` (the kernel's high-water mark over the process' life, model loading
included). Every client is a thread with its own connection; the clients of a round start
together (a barrier) and send one request each, no retries.

Rounds, in order:

- ``clients_1``: labelled frontal test-split X-rays (``--per-source`` of each source) one at a
  time; only those answered 200 (the gate refuses about 2 % of frontal images) are used next.
- ``clients_10``, ``clients_100``: that many clients at once, the X-rays cycled.
- ``huge_9999``: ``--huge`` (20) clients at once, each uploading a 9999x9999 PNG of about 100 kB
  (black with a gradient square: not blank), 99,980,001 pixels, under the command line's
  100-megapixel limit; the server refuses it from the header (413).
- ``large_5999``: the same with 5999x5999 (35,988,001 pixels), just under the server's limit:
  these are decoded, one at a time, and go through the models (the gate refuses them).

Latency statistics are over the requests answered 200 (a 503 takes milliseconds and would
make any median look good); the status counts say how many were refused. PASS when the
100-client round has only 200 and 503, its fastest 200 within 2 s and median <= 0.6 x slowest,
and the peak resident memory during the two hostile rounds (and the high-water mark over the
whole run) is <= 2.5 GB. Exit code 1 on FAIL.

Usage:
    python benchmarks/serve_load.py --json benchmarks/results/serve_load.json

About 2 minutes on 2 cores (model loading, ~200 readings, the 5999 px images).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout under test

from covidcxr.data import load_records  # noqa: E402
from covidcxr.data.classification import classification_samples  # noqa: E402

GB = 1e9
MEMORY_LIMIT_GB = 2.5


def pick_frontal(data_root: str | None, per_source: int) -> list[Path]:
    """The first ``per_source`` labelled frontal test-split X-rays of each source."""
    samples, _ = classification_samples(load_records(data_root), "test")
    out: dict[str, list[Path]] = {}
    for s in samples:
        out.setdefault(s["dataset"], []).append(Path(s["path"]))
    return [p for paths in out.values() for p in paths[:per_source]]


def tiny_huge_png(side: int) -> bytes:
    """A side x side 8-bit PNG of about 100 kB: black, with a 256 px gradient square so that it is not blank."""
    img = np.zeros((side, side), np.uint8)
    img[:256, :256] = np.add.outer(np.arange(256), np.arange(256)) // 2
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class RssSampler:
    """Peak ``VmRSS`` of a process over a window, sampled every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every, self.peak, self._stop = pid, every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kb(self.pid, "VmRSS") * 1024)
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def one_round(url: str, uploads: list[tuple[str, bytes]], pid: int, timeout: float) -> dict:
    """Every upload from its own client thread, all released together; statistics of the answers."""
    barrier = threading.Barrier(len(uploads))

    def post(upload: tuple[str, bytes]) -> tuple[int, float]:
        name, data = upload
        with httpx.Client(timeout=timeout) as client:
            barrier.wait()
            t = time.perf_counter()
            try:
                r = client.post(f"{url}/v1/predict", files={"file": (name, data)})
                code = r.status_code
            except httpx.HTTPError as err:  # a connection refused or reset counts as no answer
                code = f"{type(err).__name__}"
            return code, time.perf_counter() - t

    rss_before = _status_kb(pid, "VmRSS") * 1024
    t0 = time.perf_counter()
    with RssSampler(pid) as rss, ThreadPoolExecutor(len(uploads)) as pool:
        results = list(pool.map(post, uploads))
    wall = time.perf_counter() - t0
    codes = [c for c, _ in results]
    ok = np.array([t for c, t in results if c == 200])
    stats = {}
    if len(ok):
        stats = {
            "min_s": float(ok.min()),
            "p50_s": float(np.median(ok)),
            "p95_s": float(np.percentile(ok, 95)),
            "max_s": float(ok.max()),
            "median_over_max": float(np.median(ok) / ok.max()),
        }
    all_t = np.array([t for _, t in results])
    return {
        "clients": len(uploads),
        "status_codes": {str(c): codes.count(c) for c in sorted(set(codes), key=str)},
        "latency_200": stats,
        "latency_all": {"p50_s": float(np.median(all_t)), "max_s": float(all_t.max())},
        "wall_s": wall,
        "answered_200_per_s": float(len(ok) / wall),
        "rss_before_gb": rss_before / GB,
        "rss_peak_gb": rss.peak / GB,
        "rss_after_gb": _status_kb(pid, "VmRSS") * 1024 / GB,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root")
    ap.add_argument("--per-source", type=int, default=6, help="frontal X-rays of each source (default 6)")
    ap.add_argument("--huge", type=int, default=20, help="concurrent huge uploads per hostile round (default 20)")
    ap.add_argument("--timeout", type=float, default=300, help="client timeout, seconds")
    ap.add_argument("--json")
    args = ap.parse_args()

    files = pick_frontal(args.data_root, args.per_source)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "covidcxr.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    load_start = os.getloadavg()
    server_log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in the finally below); uvicorn's access log, one line per request: not a pipe nobody drains
    server = subprocess.Popen(cmd, env=env, stdout=server_log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                server_log.seek(0)
                raise RuntimeError(
                    f"the server did not start: {server_log.read()[-2000:] if server.poll() is not None else 'timeout'}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        rounds: dict[str, dict] = {}
        rss_start = _status_kb(server.pid, "VmRSS") * 1024 / GB

        # 1 client: one X-ray at a time; keeps those the gate accepts for the rounds below.
        singles, accepted = [], []
        with httpx.Client(timeout=args.timeout) as client:
            for f in files:
                data = f.read_bytes()
                t = time.perf_counter()
                r = client.post(f"{url}/v1/predict", files={"file": (f.name, data)})
                singles.append((r.status_code, time.perf_counter() - t))
                if r.status_code == 200:
                    accepted.append((f.name, data))
        ok = np.array([t for c, t in singles if c == 200])
        codes = [c for c, _ in singles]
        rounds["clients_1"] = {
            "clients": 1,
            "requests": len(singles),
            "status_codes": {str(c): codes.count(c) for c in sorted(set(codes))},
            "latency_200": {
                "min_s": float(ok.min()),
                "p50_s": float(np.median(ok)),
                "p95_s": float(np.percentile(ok, 95)),
                "max_s": float(ok.max()),
            },
            "answered_200_per_s": float(1 / np.mean(ok)),
        }
        for n in (10, 100):
            rounds[f"clients_{n}"] = one_round(
                url, [accepted[i % len(accepted)] for i in range(n)], server.pid, args.timeout
            )
            print(f"clients_{n}: {json.dumps(rounds[f'clients_{n}'])}", file=sys.stderr)
        for side in (9999, 5999):
            data = tiny_huge_png(side)
            name = "huge_9999" if side == 9999 else "large_5999"
            rounds[name] = one_round(
                url, [(f"{name}_{i}.png", data) for i in range(args.huge)], server.pid, args.timeout
            )
            rounds[name] |= {"side_px": side, "upload_kb": len(data) / 1024}
            print(f"{name}: {json.dumps(rounds[name])}", file=sys.stderr)
        rss_end = _status_kb(server.pid, "VmRSS") * 1024 / GB
        hwm = _status_kb(server.pid, "VmHWM") * 1024 / GB
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()

    r100 = rounds["clients_100"]
    only_200_503 = set(r100["status_codes"]) <= {"200", "503"}
    fast = r100["latency_200"].get("min_s", float("inf")) <= 2.0
    spread = r100["latency_200"].get("median_over_max", 1.0) <= 0.6
    hostile_peak = max(rounds["huge_9999"]["rss_peak_gb"], rounds["large_5999"]["rss_peak_gb"])
    checks = {
        "clients_100_only_200_or_503": only_200_503,
        "clients_100_fastest_within_2s": fast,
        "clients_100_median_at_most_0.6_of_slowest": spread,
        f"hostile_rss_peak_at_most_{MEMORY_LIMIT_GB}gb": hostile_peak <= MEMORY_LIMIT_GB,
        f"run_rss_high_water_mark_at_most_{MEMORY_LIMIT_GB}gb": hwm <= MEMORY_LIMIT_GB,
    }
    import torch

    report = {
        "command": cmd,
        "machine": {
            "cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "server_rss_gb": {"after_start": rss_start, "end": rss_end, "high_water_mark": hwm},
        "rounds": rounds,
        "checks": checks,
        "pass": all(checks.values()),
    }
    print(json.dumps({"server_rss_gb": report["server_rss_gb"], "checks": checks, "pass": report["pass"]}, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
