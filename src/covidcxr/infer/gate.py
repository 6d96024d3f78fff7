"""The input gate: is this a frontal chest X-ray? One decision per image, with the reason when not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..gate import gate_refusal
from ..postprocess import geometry
from .lungs import pooled_features, sigmoid
from .runners import Runner, load_runner


class GateDecision(NamedTuple):
    probability: float  # P(frontal chest X-ray)
    refusal: str | None  # what the gate saw, in words, when it refuses


class Gate:
    """P(frontal chest X-ray) from the stage-1 encoder's features and the lung mask, and the refusal rule."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.spec = runner, runner.spec

    @classmethod
    def from_spec(
        cls, spec_path: str | Path | None = None, backend: str = "torch", onnx_dir: str | Path | None = None
    ) -> Gate:
        return cls(load_runner("gate", spec_path, backend, onnx_dir))

    def probability(self, features: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        """P(frontal) (N,) from pooled encoder features (N, C) and lung masks."""
        x = np.concatenate([np.asarray(features, np.float32), np.stack([geometry(m) for m in masks])], axis=1)
        return sigmoid(self.runner.run(features=x)[0])

    def decide(
        self, images: Sequence[np.ndarray], encoder: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> list[GateDecision]:
        """The gate's answer for each image of one stage-1 pass."""
        p = self.probability(pooled_features(encoder), masks)
        return [
            GateDecision(float(pi), gate_refusal(float(pi), im, m, self.spec))
            for pi, im, m in zip(p, images, masks, strict=True)
        ]
