"""Where a CNN diagnosis looked: Grad-CAM of its last feature map, in closed form.

For a timm classifier (global average pooling + linear head) Grad-CAM at the pooled layer is
``relu(W_c . A) / (h * w)`` (:func:`covidcxr.models.cam.grad_cam`, the map inference and the
ONNX export compute too); a test checks it against captum's Grad-CAM. Maps come back at the
view's size, each scaled to a maximum of 1; :func:`covidcxr.views.to_image` puts them into
the full image and :func:`covidcxr.views.lung_share` measures the share inside the lungs.
"""

from __future__ import annotations

import numpy as np
import torch

from .models import eval_mode
from .models.classifier import CAM_LAYERS
from .models.graphs import DiagnosisGraph
from .views import cam_maps


class GradCam:
    """Grad-CAM maps of a diagnosis classifier.

    Args:
        model: the classifier; architecture: its registry name (it must pool and end in a linear layer).
    """

    def __init__(self, model: torch.nn.Module, architecture: str) -> None:
        if architecture not in CAM_LAYERS:
            raise KeyError(f"no Grad-CAM layer known for {architecture!r}; known: {sorted(CAM_LAYERS)}")
        self.model = model
        self.graph = DiagnosisGraph(model, architecture)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, targets: list[int] | torch.Tensor) -> np.ndarray:
        """Heat maps (N, S, S) in [0, 1] at the input size, one per image for its target class.

        Positive evidence only (ReLU), each map scaled to a maximum of 1 (all zeros when the
        class has no positive evidence).
        """
        with eval_mode(self.model):
            _, cam = self.graph(torch.as_tensor(batch))
        return cam_maps(cam.numpy(), [int(t) for t in targets], int(batch.shape[-1]))
