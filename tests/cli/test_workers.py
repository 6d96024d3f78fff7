"""Decoding workers die with their run, and a killed ``covidcxr predict --workers 2`` resumes at once."""

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
from PIL import Image

from covidcxr.batch import OutputBusyError, output_lock
from covidcxr.batch.workers import worker_init


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_dies_with_its_parent_and_frees_the_output_lock(tmp_path: Path) -> None:
    read, write = os.pipe()
    parent = os.fork()
    if parent == 0:  # the run: takes the lock, forks a worker, reports its pid, waits to be killed
        try:
            os.close(read)
            with output_lock(tmp_path):
                worker = os.fork()
                if worker == 0:
                    worker_init(os.getppid())
                    time.sleep(60)
                    os._exit(0)
                os.write(write, f"{worker}\n".encode())
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(write)
    worker = int(os.read(read, 64).decode())
    os.close(read)
    with pytest.raises(OutputBusyError, match=f"pid {parent}"), output_lock(tmp_path):
        pass
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    assert _wait_gone([worker], 5.0) == []
    with output_lock(tmp_path):  # free at once
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_live_worker_does_not_hold_the_lock_of_a_parent_that_let_go(tmp_path: Path) -> None:
    read, write = os.pipe()
    with output_lock(tmp_path):
        worker = os.fork()
        if worker == 0:
            os.close(read)
            worker_init(os.getppid())
            os.write(write, b"ready")
            time.sleep(60)
            os._exit(0)
        os.close(write)
        assert os.read(read, 8) == b"ready"
    try:
        with output_lock(tmp_path):  # the worker, still alive, closed its copy of the lock
            pass
    finally:
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_run_with_workers_then_the_same_command_resumes(tmp_path: Path, fixtures: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    xray = np.asarray(Image.open(fixtures / "nih_00000710_003.png").convert("L"))
    for i in range(48):  # real X-rays, a little different each so that nothing is cached
        noisy = np.clip(xray.astype(np.int16) + rng.integers(-3, 4, xray.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(inputs / f"cxr{i:02d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "covidcxr.cli", "predict", str(inputs), "--out", str(out), "--workers", "2"]
    command += ["--batch-size", "2", "--no-saliency", "--no-report", "-q"]
    jsonl = out / "predictions.jsonl"
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (jsonl.is_file() and jsonl.read_text().count("\n") >= 4) and time.monotonic() < deadline:
        assert run.poll() is None, run.stderr.read().decode()
        time.sleep(0.2)
    workers = _children(run.pid)
    assert len(workers) >= 2, workers
    run.kill()
    run.wait()
    assert _wait_gone(workers, 5.0) == [], "decoding workers outlived their run"
    done_before = jsonl.read_text().count("\n")
    assert done_before < 48, "the run ended before it could be killed"
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode in (0, 2), again.stderr
    assert "in use by another run" not in again.stderr
    paths = [json.loads(line)["path"] for line in jsonl.read_text().splitlines()]
    assert sorted(paths) == sorted(str(p) for p in inputs.iterdir())  # every row exactly once
