"""Class-activation maps of a global-average-pooling + linear head, in closed form (one definition).

With global average pooling and a linear classifier, class c's logit is the mean over positions
of ``CAM_c = sum_k W[c, k] A_k`` plus a bias, so the gradient of that logit with respect to the
pooled feature map is ``W[c] / (h * w)`` at every position, and Grad-CAM there is
``relu(CAM_c) / (h * w)``. Inference (both backends), the ONNX export and the lung-attention
loss all use :func:`class_activation`; a test checks :func:`grad_cam` against captum's Grad-CAM.
"""

from __future__ import annotations

import torch


def class_activation(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``CAM_c = sum_k W[c, k] A_k``.

    Shape:
        features (N, K, h, w), weight (C, K) -> (N, C, h, w), float32.
    """
    return torch.einsum("nkhw,ck->nchw", features.float(), weight.float())


def grad_cam(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of every class at the pooled layer: ``relu(CAM_c) / (h * w)``, (N, C, h, w)."""
    return torch.relu(class_activation(features, weight) / (features.shape[-2] * features.shape[-1]))
