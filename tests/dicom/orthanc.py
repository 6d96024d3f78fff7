"""A real PACS for the tests and the benchmark: Debian's Orthanc on loopback, with its own temporary storage.

Also imported by ``benchmarks/dicom_node.py`` (its folder is put on ``sys.path``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
AE_TITLE = "ORTHANC"


def free_port() -> int:
    """A TCP port nothing listens on now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """An Orthanc server in ``root``: REST on a free loopback port, DICOM on another, modalities named.

    Args:
        root: an empty folder for its configuration, storage, index and log.
        modalities: name -> (AE title, host, port) of the DICOM nodes it may send to and accept from.
    """

    def __init__(self, root: Path, modalities: dict[str, tuple[str, str, int]]) -> None:
        self.root, self.modalities = Path(root), modalities
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None
        self.log = self.root / "orthanc.log"

    def config(self) -> dict:
        storage = self.root / "storage"
        return {
            "Name": "covidcxr-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AE_TITLE,
            "RemoteAccessAllowed": False,  # REST answers loopback only
            "AuthenticationEnabled": False,
            "DicomModalities": {name: list(m) for name, m in self.modalities.items()},
            # DICOM: only the named modalities, from their own host, may store or echo.
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "DicomScuTimeout": 30,
            "Plugins": [],
            "StableAge": 1,
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        """Write the configuration, start Orthanc and wait for its REST API."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- REST ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | dict | None = None, timeout: float = 120.0):
        """One REST call; JSON answers are decoded, others returned as bytes.

        Raises:
            urllib.error.HTTPError: a status of 400 or more (its body tells why).
        """
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw

    def get(self, path: str):
        return self.request("GET", path)

    def upload(self, dicom: bytes) -> str:
        """Store a DICOM file in Orthanc; returns its instance id."""
        return self.request("POST", "/instances", dicom)["ID"]

    def send(self, modality: str, ids: list[str]) -> tuple[bool, str]:
        """C-STORE instances to a modality, synchronously: (stored, Orthanc's answer or error)."""
        try:
            answer = self.request("POST", f"/modalities/{modality}/store", {"Resources": ids, "Synchronous": True})
            return True, json.dumps(answer)
        except urllib.error.HTTPError as err:
            return False, err.read().decode(errors="replace")

    def instances(self) -> list[str]:
        return self.get("/instances")

    def file(self, instance: str) -> bytes:
        return self.get(f"/instances/{instance}/file")

    def wait_for(self, count: int, timeout: float = 60.0, exclude: set[str] | frozenset = frozenset()) -> list[str]:
        """Wait until Orthanc holds ``count`` instances besides ``exclude``; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            new = [i for i in self.instances() if i not in exclude]
            if len(new) >= count or time.monotonic() > deadline:
                return new
            time.sleep(0.1)
