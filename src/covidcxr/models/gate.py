"""The input gate's model: logistic regression on stage-1 encoder features and lung geometry.

See :mod:`covidcxr.infer.gate` for how it is used and :mod:`covidcxr.engine.gate.train` for how it is trained.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..postprocess import GEOMETRY, geometry  # noqa: F401  (re-exported)
from .registry import register_model


@register_model(name="frontal_gate", task="gate")
class FrontalGate(nn.Module):
    """Logistic regression with its feature standardisation built in.

    Input (N, in_features): encoder features followed by :func:`geometry`; output (N,)
    logits of "frontal chest X-ray".
    """

    def __init__(
        self, in_chans: int = 1, num_classes: int = 1, pretrained: str | None = None, in_features: int = 1283
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.scale)[:, 0]

    @torch.inference_mode()
    def probability(self, features: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        """P(frontal chest X-ray) per image from encoder features (N, C) and lung masks."""
        x = np.concatenate([np.asarray(features, np.float32), np.stack([geometry(m) for m in masks])], axis=1)
        return torch.sigmoid(self(torch.from_numpy(x))).numpy()
