"""``covidcxr export onnx``: every shipped model as ONNX, for inference without PyTorch.

The package ships these graphs (``covidcxr/weights/onnx/``, :data:`covidcxr.specs.SHIPPED_ONNX_DIR`):
``covidcxr export onnx --shipped --force`` regenerates them in place after shipped weights change, and
``tests/models/test_shipped_onnx.py`` fails while a graph was exported from other weights than the ``.pt`` beside it.

Each model is exported as its inference graph (:mod:`covidcxr.models.graphs`: the same module
the PyTorch runner calls, named inputs and outputs, a dynamic batch) and written with a weights
spec (``<name>.json``, the PyTorch spec with ``file`` and ``sha256`` of the ``.onnx``), so that
:class:`covidcxr.infer.runners.OrtRunner` feeds it what the PyTorch runner feeds its module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .models import load_weights
from .models.graphs import Graph, example_inputs, graph
from .specs import SHIPPED_ONNX_DIR, WeightSpec, sha256_file

log = logging.getLogger(__name__)

OPSET = 17


def _export(g: Graph, args: tuple, spec: WeightSpec, out: Path) -> Path:
    path = out / f"{spec.name}.onnx"
    dynamic = {n: {0: "batch"} for n in g.inputs + g.outputs}
    g.module.eval()
    with torch.no_grad():
        torch.onnx.export(
            g.module,
            args,
            str(path),
            input_names=list(g.inputs),
            output_names=list(g.outputs),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx_spec = WeightSpec(
        **{
            **spec.__dict__,
            "file": path.name,
            "dtype": "float32",
            "sha256": sha256_file(path),
            "training": {**spec.training, "exported_from": {"file": spec.file, "sha256": spec.sha256, "opset": OPSET}},
        }
    )
    onnx_spec.to_json(out / f"{spec.name}.json")
    log.info("exported %s", path)
    return path


def check_shipped_target(out_dir: str | Path, force: bool = False) -> Path:
    """``out_dir``, unless it is the package's folder of shipped graphs and holds graphs that ``force`` does not allow replacing.

    Raises:
        FileExistsError: the folder is the shipped one, it holds graphs and ``force`` is off; one sentence.
    """
    out = Path(out_dir)
    if out.resolve() == SHIPPED_ONNX_DIR.resolve() and not force:
        there = sorted(p.name for p in out.glob("*.onnx"))
        if there:
            raise FileExistsError(
                f"{out} holds the shipped ONNX graphs ({', '.join(there)}); add --force to replace them on purpose "
                "(after the shipped weights changed), or pass --out DIR to export elsewhere"
            )
    return out


def export_onnx(
    out_dir: str | Path,
    lungs: str | None = None,
    diagnosis: str | None = None,
    gate: str | None = None,
    lesions: str | None = None,
    severity: str | None = None,
) -> list[Path]:
    """Export the five models (default: the shipped ones) into ``out_dir``; returns the ONNX paths.

    ``out_dir`` may be :data:`covidcxr.specs.SHIPPED_ONNX_DIR` only for the shipped weights themselves (the
    caller checks ``--force`` with :func:`check_shipped_target`).
    """
    out = Path(out_dir)
    if out.resolve() == SHIPPED_ONNX_DIR.resolve() and any((lungs, diagnosis, gate, lesions, severity)):
        raise ValueError(
            f"{out} holds the graphs of the shipped weights only; export other weights with --out DIR, or first "
            "make them the shipped ones (covidcxr train ... --export src/covidcxr/weights --force)"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, kind in (
        (lungs, "lungs"),
        (lesions, "lesions"),
        (diagnosis, "diagnosis"),
        (gate, "gate"),
        (severity, "severity"),
    ):
        model, spec = load_weights(path, kind=kind)
        written.append(_export(graph(model, spec), example_inputs(model, spec), spec, out))
    return written
