"""From image to lungs: the stage-1 predictor used by every command and service.

``LungSegmenter`` rebuilds preprocessing from the weights spec (input size, resize rule,
normalization), runs the model on a batch, brings the probabilities back to each image's
own pixel size and keeps the two lungs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data.transforms import resize_image, upsample_logits
from .io import NORMALIZATION, normalize
from .models import WeightSpec, eval_mode, load_weights
from .postprocess import keep_lungs


class LungSegmenter:
    """Lung masks for images of any size.

    Args:
        model: segmentation network returning (N, 1, h, w) logits.
        spec: the weights spec the model was loaded with.
    """

    def __init__(self, model: torch.nn.Module, spec: WeightSpec) -> None:
        if spec.normalization != NORMALIZATION:
            raise ValueError(f"weights expect normalization {spec.normalization!r}; this version implements {NORMALIZATION!r}")
        if spec.resize != "stretch":
            raise ValueError(f"weights expect resize rule {spec.resize!r}; this version implements 'stretch'")
        self.model = model
        self.spec = spec
        self.size = tuple(spec.input_size)

    @classmethod
    def from_spec(cls, spec_path: str | Path | None = None) -> LungSegmenter:
        """Load a weights spec (default: the shipped lung model)."""
        model, spec = load_weights(spec_path, kind="lungs")
        return cls(model, spec)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Images (H, W) in [0, 1] -> model batch (N, 1, *input_size), normalized."""
        batch = torch.stack([resize_image(torch.from_numpy(np.ascontiguousarray(im, np.float32)), self.size) for im in images])
        return normalize(batch)

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Lung probability maps, each at its image's own pixel size (float32 (H, W))."""
        if not images:
            return []
        with eval_mode(self.model):
            logits = self.model(self.preprocess(images)).float()
        return [torch.sigmoid(upsample_logits(lg[None], im.shape[-2:]))[0, 0].numpy() for lg, im in zip(logits, images)]

    def segment(self, images: Sequence[np.ndarray], postprocess: bool = True) -> list[np.ndarray]:
        """Boolean lung masks (H, W) at each image's own size; ``postprocess`` keeps two lungs, fills holes."""
        masks = [p > self.spec.threshold for p in self.probabilities(images)]
        return [keep_lungs(m) for m in masks] if postprocess else masks
