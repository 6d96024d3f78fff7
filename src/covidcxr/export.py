"""``covidcxr export onnx``: every shipped model as ONNX, for inference without PyTorch.

Each model is exported with the outputs the pipeline reads, and written with a weights spec
(``<name>.json``, the PyTorch spec with ``file`` and ``sha256`` of the ``.onnx``) so that
:mod:`covidcxr.runtime` rebuilds the same preprocessing:

- lungs: input ``x`` (N, 1, S, S) -> ``logits`` and the encoder's feature maps ``f1``-``f5``
  (the gate and the lesion decoder read them);
- lesions: ``x``, ``f1``-``f5`` -> ``logits`` (N, 2, S, S);
- diagnosis: ``x`` -> ``logits`` and ``cam`` (N, K, h, w): Grad-CAM of every class at the
  last feature map. With global average pooling and a linear classifier the gradient of a
  class logit with respect to that map is the class's weight vector divided by h*w at every
  position, so Grad-CAM there is ReLU(W_c . A / (h*w)), computed in the graph (a test
  checks it against captum's Grad-CAM);
- diagnosis of the source-blind design: ``x``, lung ``weights`` (N, 1, h, w), ``facts`` (N, F)
  -> ``logits`` and ``cam``, its exact class-activation maps (see :mod:`covidcxr.models.source_blind`);
- gate: features (N, D) -> logit; severity: image and zone features -> scores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .models import load_weights
from .models.classifier import CAM_LAYERS
from .specs import WeightSpec, sha256_file

log = logging.getLogger(__name__)

OPSET = 17


class _Lungs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model.net  # the U-Net inside PadToStride (exported at its fixed input size)

    def forward(self, x: torch.Tensor):
        feats = self.net.encoder(x)
        logits = self.net.segmentation_head(self.net.decoder(feats))
        return (logits, *feats[1:])


class _Lesions(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, f1, f2, f3, f4, f5):
        return self.model([x, f1, f2, f3, f4, f5])  # the decoder reads only the input's size


class _Diagnosis(nn.Module):
    def __init__(self, model: nn.Module, architecture: str) -> None:
        super().__init__()
        self.model = model
        head = model.get_classifier()
        if not isinstance(head, nn.Linear) or CAM_LAYERS.get(architecture) is None:
            raise ValueError(
                f"ONNX Grad-CAM needs a linear classifier after global average pooling; {architecture} has {type(head).__name__}"
            )
        self.head = head

    def forward(self, x: torch.Tensor):
        a = self.model.forward_features(x)
        logits = self.model.forward_head(a)
        cam = torch.relu(torch.einsum("kc,nchw->nkhw", self.head.weight, a) / (a.shape[-2] * a.shape[-1]))
        return logits, cam


def _export(module: nn.Module, args: tuple, names: tuple[list[str], list[str]], spec: WeightSpec, out: Path) -> Path:
    path = out / f"{spec.name}.onnx"
    dynamic = {n: {0: "batch"} for n in names[0] + names[1]}
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names[0],
            output_names=names[1],
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


def export_onnx(
    out_dir: str | Path,
    lungs: str | None = None,
    diagnosis: str | None = None,
    gate: str | None = None,
    lesions: str | None = None,
    severity: str | None = None,
) -> list[Path]:
    """Export the five models (default: the shipped ones) into ``out_dir``; returns the ONNX paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    model, spec = load_weights(lungs, kind="lungs")
    s = int(spec.input_size[0])
    x = torch.randn(1, 1, s, s)
    written.append(_export(_Lungs(model), (x,), (["x"], ["logits", "f1", "f2", "f3", "f4", "f5"]), spec, out))
    with torch.no_grad():
        feats = model.net.encoder(x)
    lesion_model, lesion_spec = load_weights(lesions, kind="lesions")
    written.append(
        _export(
            _Lesions(lesion_model), tuple(feats), (["x", "f1", "f2", "f3", "f4", "f5"], ["logits"]), lesion_spec, out
        )
    )
    diag, diag_spec = load_weights(diagnosis, kind="diagnosis")
    d = int(diag_spec.input_size[0])
    if diag_spec.architecture == "source_blind_mobilenet_v2":  # its forward already returns (logits, cam)
        args = (
            torch.randn(1, 1, d, d),
            torch.rand(1, 1, d // 32, d // 32),
            torch.rand(1, int(diag_spec.model_kwargs.get("n_facts", 0))),
        )
        written.append(_export(diag, args, (["x", "weights", "facts"], ["logits", "cam"]), diag_spec, out))
    else:
        written.append(
            _export(
                _Diagnosis(diag, diag_spec.architecture),
                (torch.randn(1, 1, d, d),),
                (["x"], ["logits", "cam"]),
                diag_spec,
                out,
            )
        )
    gate_model, gate_spec = load_weights(gate, kind="gate")
    written.append(
        _export(gate_model, (torch.randn(1, gate_model.linear.in_features),), (["features"], ["logit"]), gate_spec, out)
    )
    head, head_spec = load_weights(severity, kind="severity")
    args = (torch.randn(1, head.image_in), torch.randn(1, 6, head.zone.in_features))
    written.append(_export(head, args, (["image_features", "zone_features"], ["scores", "zones"]), head_spec, out))
    return written
