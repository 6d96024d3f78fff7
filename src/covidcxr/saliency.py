"""Where the diagnosis looked: Grad-CAM of the classifier, mapped back onto the X-ray.

Grad-CAM (captum's ``LayerGradCam`` on the backbone's last feature map, ``CAM_LAYERS``) of
the predicted class, at the lung view; then pasted into the lung box of the full image, so
the heat map has the input's pixel size. :func:`lung_share` is the fraction of the heat
inside the lung mask: the number the shortcut audit reports.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam

from .models import eval_mode
from .models.classifier import CAM_LAYERS
from .views import lung_share, to_image  # noqa: F401  (NumPy; re-exported)


class GradCam:
    """Grad-CAM maps of a diagnosis classifier.

    Args:
        model: the classifier; architecture: its registry name (picks the layer).
    """

    def __init__(self, model: torch.nn.Module, architecture: str) -> None:
        if architecture not in CAM_LAYERS:
            raise KeyError(f"no Grad-CAM layer known for {architecture!r}; known: {sorted(CAM_LAYERS)}")
        self.model = model
        self.cam = LayerGradCam(model, model.get_submodule(CAM_LAYERS[architecture]))

    def __call__(self, batch: torch.Tensor, targets: list[int] | torch.Tensor) -> np.ndarray:
        """Heat maps (N, S, S) in [0, 1] at the input size, one per image for its target class.

        Positive evidence only (ReLU), each map scaled to a maximum of 1 (all zeros when the
        class has no positive evidence).
        """
        with eval_mode(self.model), torch.enable_grad():
            x = batch.clone().requires_grad_(True)
            attr = self.cam.attribute(x, target=torch.as_tensor(targets), relu_attributions=True)
        maps = F.interpolate(attr.detach().float(), size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        return (maps.clamp_min(0) / peak).numpy()
