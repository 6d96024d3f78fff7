"""48 concurrent ``POST /v1/predict`` requests against a real ``covidcxr serve`` (uvicorn) on CPU.

Issue: "48 concurrent /v1/predict requests on 2 cores all succeed; p50 and p95 latency
reported".

The server runs in this process on a free localhost port (uvicorn in a thread, the shipped
models loaded once); 48 client threads each upload one X-ray (the three sources' images,
cycled; labelled frontal test-split images, which the input gate accepts) at the same moment. Inference is serialised by the server (one reading at a time),
so a request's latency is its wait in the queue plus its own reading; the total wall time
over 48 gives the server's throughput. Baseline in the same run: one request alone.

Usage:
    python benchmarks/serve.py --json benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the checkout under test

from covidcxr.data import load_records  # noqa: E402
from covidcxr.data.classification import classification_samples  # noqa: E402
from covidcxr.web import create_app  # noqa: E402


def pick_frontal(data_root: str | None, per_source: int) -> list[Path]:
    """The first ``per_source`` labelled frontal test-split X-rays of each source (what the gate accepts)."""
    samples, _ = classification_samples(load_records(data_root), "test")
    out: dict[str, list[Path]] = {}
    for s in samples:
        out.setdefault(s["dataset"], []).append(Path(s["path"]))
    return [p for paths in out.values() for p in paths[:per_source]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root")
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--json")
    args = ap.parse_args()
    from covidcxr.infer import Predictor
    from covidcxr.io import read_image

    pipeline = Predictor.load()
    files = [
        f for f in pick_frontal(args.data_root, 17) if pipeline.run([read_image(f)])[0].ok
    ]  # the gate refuses ~2% of frontal images
    port = _free_port()
    app = create_app(
        pipeline, max_queue=args.requests
    )  # every request admitted: this measures the queue, serve_load.py the refusals
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.1)

    def post(path: Path) -> tuple[int, float]:
        t = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            r = client.post(f"{url}/v1/predict", files={"file": (path.name, path.read_bytes())})
        return r.status_code, time.perf_counter() - t

    post(files[0])  # warm-up
    single = [post(files[i])[1] for i in range(3)]
    batch = [files[i % len(files)] for i in range(args.requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.requests) as pool:
        results = list(pool.map(post, batch))
    wall = time.perf_counter() - t0
    server.should_exit = True
    thread.join(timeout=10)
    codes = [c for c, _ in results]
    lat = np.array([t for _, t in results])
    res = {
        "requests": args.requests,
        "succeeded": sum(c == 200 for c in codes),
        "status_codes": {str(c): codes.count(c) for c in sorted(set(codes))},
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "latency_max_s": float(lat.max()),
        "wall_s": wall,
        "throughput_per_s": args.requests / wall,
        "single_request_s": float(np.median(single)),
    }
    report = {"machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg()}, "results": res}
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if res["succeeded"] == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
