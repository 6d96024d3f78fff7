"""Where a model's graph runs: PyTorch or onnxruntime, arrays in and arrays out.

A :class:`Runner` holds one model's weights spec and runs its inference graph
(:mod:`covidcxr.models.graphs`): named float32 NumPy arrays in, the graph's outputs out as a
list of float32 arrays, in the graph's output order. The stages (:mod:`covidcxr.infer`) do all
pre- and post-processing in NumPy around a runner, so the two backends differ only here.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..specs import SHIPPED, SHIPPED_ONNX_DIR, WEIGHTS_DIR, WeightSpec, sha256_file

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
#: What ``backend="auto"`` means: PyTorch where it is installed (the train extra), else onnxruntime.
AUTO = "auto"


@runtime_checkable
class Runner(Protocol):
    """One model: ``spec``, the graph's ``inputs`` names, and ``run(**arrays) -> outputs``."""

    spec: WeightSpec
    inputs: tuple[str, ...]

    def run(self, **arrays: np.ndarray) -> list[np.ndarray]: ...


def default_onnx_dir() -> Path:
    """Where ``covidcxr export onnx`` writes by default: ``$COVIDCXR_CACHE/onnx`` or ``~/.cache/covidcxr/onnx``."""
    base = os.environ.get("COVIDCXR_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "covidcxr") / "onnx"


def resolve_backend(backend: str = AUTO) -> str:
    """``torch`` or ``onnxruntime``: ``auto`` is PyTorch when it is installed, else onnxruntime (the light install).

    Finding out imports neither library.

    Raises:
        ValueError: ``backend`` is none of ``auto``, ``torch``, ``onnxruntime``.
    """
    if backend == AUTO:
        try:
            found = importlib.util.find_spec("torch") is not None
        except (ImportError, ValueError):  # an import system that refuses it: as good as absent
            found = False
        return "torch" if found else "onnxruntime"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {(AUTO, *BACKENDS)}, got {backend!r}")
    return backend


class TorchRunner:
    """A model loaded from a ``.pt`` weights spec, run through its graph module on the CPU (or :meth:`to` a GPU)."""

    backend = "torch"

    def __init__(self, model, spec: WeightSpec) -> None:
        import torch

        from ..models.graphs import graph

        self.model, self.spec = model, spec  # the plain module (training and audits read it)
        g = graph(model, spec)
        # channels_last: faster CPU convolutions (a no-op for the linear models)
        self.module = g.module.eval().to(memory_format=torch.channels_last)
        self.inputs, self.outputs = g.inputs, g.outputs
        self.device = torch.device("cpu")

    def to(self, device: str) -> TorchRunner:
        """Run on ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``) from now on; arrays still go in and out on the CPU."""
        import torch

        self.device = torch.device(device)
        self.module = self.module.to(self.device)
        return self

    @classmethod
    def load(cls, spec_path: str | Path | None, kind: str) -> TorchRunner:
        """The weights of ``spec_path`` (None: the shipped model of ``kind``), sha256 checked."""
        from ..models import load_weights

        model, spec = load_weights(spec_path, kind=kind)
        return cls(model, spec)

    def run(self, **arrays: np.ndarray) -> list[np.ndarray]:
        import torch  # imported at construction already: a dictionary lookup here

        tensors = []
        for name in self.inputs:
            t = torch.from_numpy(np.ascontiguousarray(arrays[name], np.float32)).to(self.device)
            tensors.append(t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t)
        with torch.inference_mode():
            out = self.module(*tensors)
        out = out if isinstance(out, tuple | list) else (out,)
        return [o.float().cpu().numpy() for o in out]


class OrtRunner:
    """An ONNX model named by a weights spec (``covidcxr export onnx``); the file's sha256 is checked first."""

    backend = "onnxruntime"

    def __init__(self, spec_path: str | Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeError(
                "the onnxruntime backend needs onnxruntime, which `pip install covidcxr` installs: "
                "pip install 'onnxruntime>=1.17'"
            ) from err
        spec_path = Path(spec_path)
        if not spec_path.is_file():
            shipped = spec_path.parent.resolve() == SHIPPED_ONNX_DIR.resolve()
            how = "covidcxr export onnx --shipped" if shipped else f"covidcxr export onnx --out {spec_path.parent}"
            raise FileNotFoundError(
                f"{spec_path}: ONNX weights spec not found; run `{how}` first (needs the train extra)"
            )
        self.spec = WeightSpec.from_json(spec_path)
        if not self.spec.file.endswith(".onnx"):
            raise ValueError(
                f"{spec_path}: names {self.spec.file!r}, PyTorch weights, not an ONNX graph; run them with "
                f"--backend torch (pip install 'covidcxr[train]'), or export them first: "
                f"covidcxr export onnx --out DIR, then pass DIR's spec"
            )
        path = spec_path.parent / self.spec.file
        if path.resolve().parent != spec_path.parent.resolve():
            raise ValueError(f"{spec_path}: its file {self.spec.file!r} lies outside the spec's folder")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX file named by {spec_path.name} not found")
        if sha256_file(path) != self.spec.sha256:
            raise ValueError(f"{path}: sha256 does not match its spec; export again")
        options = ort.SessionOptions()
        # No spin-waiting: each of the pipeline's five sessions has its own thread pool, and
        # threads that spin after a run take the cores from the NumPy work and the next
        # session (measured on 2 cores: one image 169 ms spinning, 81 ms without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = tuple(i.name for i in self.session.get_inputs())

    def run(self, **arrays: np.ndarray) -> list[np.ndarray]:
        # The exporter drops graph inputs nothing reads (facts-only diagnosis: no x): those are left out.
        feeds = {n: np.ascontiguousarray(arrays[n], np.float32) for n in self.inputs}
        return [np.asarray(o, np.float32) for o in self.session.run(None, feeds)]


def load_runner(
    kind: str, spec_path: str | Path | None = None, backend: str = AUTO, onnx_dir: str | Path | None = None
) -> Runner:
    """The runner of one model: a ``.pt`` spec (torch; None: shipped) or the ONNX graph of ``kind``.

    Args:
        kind: one of :data:`covidcxr.specs.SHIPPED`.
        spec_path: the model's spec; None: the shipped model (on onnxruntime, ``onnx_dir``'s graph of it).
        backend: ``torch``, ``onnxruntime`` or ``auto`` (:func:`resolve_backend`).
        onnx_dir: where ``covidcxr export onnx`` wrote the graphs (default: the graphs shipped in the package).
    """
    backend = resolve_backend(backend)
    if backend == "torch":
        return TorchRunner.load(spec_path, kind)
    folder = Path(onnx_dir) if onnx_dir else SHIPPED_ONNX_DIR
    runner = OrtRunner(Path(spec_path) if spec_path else folder / f"{SHIPPED[kind]}.json")
    if spec_path is None and onnx_dir is None:
        check_shipped_graph(runner.spec, kind)
    return runner


def check_shipped_graph(onnx_spec: WeightSpec, kind: str) -> None:
    """Refuse a shipped graph exported from other weights than the shipped ``.pt`` of ``kind`` (its spec is read, not hashed).

    Raises:
        ValueError: the graph is stale (the weights were retrained and the graphs not exported again); one sentence.
    """
    pt_spec = WEIGHTS_DIR / f"{SHIPPED[kind]}.json"
    if not pt_spec.is_file():  # a package shipping the graphs only
        return
    source = onnx_spec.training.get("exported_from", {}).get("sha256")
    current = WeightSpec.from_json(pt_spec).sha256
    if source != current:
        raise ValueError(
            f"the shipped ONNX graph of {SHIPPED[kind]} was exported from other weights ({str(source)[:12]}…) than "
            f"the shipped {SHIPPED[kind]}.pt ({current[:12]}…); run `covidcxr export onnx --shipped --force`, "
            "or use --backend torch"
        )
