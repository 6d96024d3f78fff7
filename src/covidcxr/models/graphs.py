"""Each model as the graph inference runs: named array inputs in, named outputs out.

The PyTorch runner (:class:`covidcxr.infer.runners.TorchRunner`) calls these modules and
``covidcxr export onnx`` exports the very same modules, so both backends compute one graph:

- lungs: ``x`` (N, 1, S, S) -> ``logits`` (N, 1, S, S) and the encoder's feature maps
  ``f1``-``f5`` (the gate and the lesion decoder read them);
- lesions: ``x`` (N, 1, S, S), the lungs-only view -> ``logits`` (N, 2, S, S) and its own
  encoder's ``f1``-``f5`` (the severity head pools ``f4``, ``f5``);
- diagnosis (a timm classifier): ``x`` -> ``logits`` and ``cam`` (N, K, h, w), Grad-CAM of every
  class at the last feature map in closed form (:func:`covidcxr.models.cam.grad_cam`);
- diagnosis of the source-blind design: ``x``, lung ``weights`` (N, 1, h, w), ``facts`` (N, F)
  -> ``logits`` and ``cam`` (its exact class-activation maps);
- gate: ``features`` (N, D) -> ``logit``; severity: ``image_features``, ``zone_features`` ->
  ``scores``, ``zones``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..specs import ENCODER_FEATURES as FEATURES
from ..specs import WeightSpec
from .cam import grad_cam
from .classifier import CAM_LAYERS
from .source_blind import SourceBlindHeads


@dataclass(frozen=True)
class Graph:
    """A module with the input and output names of its ONNX export."""

    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class UnetGraph(nn.Module):
    """A U-Net (lungs or lesions) at its fixed input size, returning the encoder's features beside the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model.net  # the U-Net inside PadToStride (inference runs at the spec's input size)

    def forward(self, x: torch.Tensor):
        feats = self.net.encoder(x)
        logits = self.net.segmentation_head(self.net.decoder(feats))
        return (logits, *feats[1:])


class DiagnosisGraph(nn.Module):
    """A timm classifier's logits and the Grad-CAM of every class (linear head after global average pooling)."""

    def __init__(self, model: nn.Module, architecture: str) -> None:
        super().__init__()
        head = model.get_classifier()
        if not isinstance(head, nn.Linear) or CAM_LAYERS.get(architecture) is None:
            raise ValueError(
                f"closed-form Grad-CAM needs a linear classifier after global average pooling; "
                f"{architecture} has {type(head).__name__}"
            )
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor):
        a = self.model.forward_features(x)
        return self.model.forward_head(a), grad_cam(a, self.head.weight)


def graph(model: nn.Module, spec: WeightSpec) -> Graph:
    """The inference graph of a model loaded from ``spec`` (see the module docstring)."""
    task = spec.task
    if task == "lung-segmentation":
        return Graph(UnetGraph(model), ("x",), ("logits", *FEATURES))
    if task == "lesions":
        return Graph(UnetGraph(model), ("x",), ("logits", *FEATURES))
    if isinstance(model, SourceBlindHeads):
        return Graph(model, ("x", "weights", "facts"), ("logits", "cam"))  # its forward is the graph
    if task == "diagnosis":
        return Graph(DiagnosisGraph(model, spec.architecture), ("x",), ("logits", "cam"))
    if task == "gate":
        return Graph(model, ("features",), ("logit",))
    if task == "severity":
        return Graph(model, ("image_features", "zone_features"), ("scores", "zones"))
    raise ValueError(f"{spec.name}: no inference graph for task {task!r}")


def example_inputs(model: nn.Module, spec: WeightSpec) -> tuple[torch.Tensor, ...]:
    """One example input per graph input (batch 1), for tracing the export."""
    s = int(spec.input_size[0])
    task = spec.task
    if task in ("lung-segmentation", "lesions"):
        return (torch.randn(1, 1, s, s),)
    if isinstance(model, SourceBlindHeads):
        facts = int(spec.model_kwargs.get("n_facts", 0))
        return torch.randn(1, 1, s, s), torch.rand(1, 1, s // 32, s // 32), torch.rand(1, facts)
    if task == "diagnosis":
        return (torch.randn(1, 1, s, s),)
    if task == "gate":
        return (torch.randn(1, model.linear.in_features),)
    if task == "severity":
        return torch.randn(1, model.image_in), torch.randn(1, 6, model.zone.in_features)
    raise ValueError(f"{spec.name}: no inference graph for task {task!r}")
