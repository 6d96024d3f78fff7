"""From image to lungs to diagnosis: the predictors used by every command and service.

``LungSegmenter`` (stage 1) rebuilds preprocessing from the weights spec (input size, resize
rule, normalization), runs the model on a batch, brings the probabilities back to each
image's own pixel size and keeps the two lungs; it can also hand out the encoder's pooled
features, which the input gate reads. ``Diagnoser`` (stage 2) turns an image and its lung
mask into the lung view its weights were trained on and returns calibrated probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data.classification import LUNG_INPUTS, apply_view, lung_view
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
        self.model = model.to(memory_format=torch.channels_last)  # faster CPU convolutions
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
    def probabilities(self, images: Sequence[np.ndarray], features: bool = False):
        """Lung probability maps, each at its image's own pixel size (float32 (H, W)).

        With ``features``, also the encoder's deepest feature map averaged over space,
        (N, C) float32, from the same forward pass.
        """
        if not images:
            return ([], np.zeros((0, 0), np.float32)) if features else []
        pooled: list[torch.Tensor] = []
        hook = None
        if features:
            hook = self.model.net.encoder.register_forward_hook(lambda _m, _i, out: pooled.append(out[-1].float().mean(dim=(2, 3))))
        try:
            with eval_mode(self.model):
                logits = self.model(self.preprocess(images).contiguous(memory_format=torch.channels_last)).float()
        finally:
            if hook is not None:
                hook.remove()
        maps = [torch.sigmoid(upsample_logits(lg[None], im.shape[-2:]))[0, 0].numpy() for lg, im in zip(logits, images)]
        return (maps, pooled[0].numpy()) if features else maps

    def segment(self, images: Sequence[np.ndarray], postprocess: bool = True, features: bool = False):
        """Boolean lung masks (H, W) at each image's own size; ``postprocess`` keeps two lungs, fills holes.

        With ``features``, returns ``(masks, encoder features (N, C))``.
        """
        maps, feats = self.probabilities(images, features=True) if features else (self.probabilities(images), None)
        masks = [p > self.spec.threshold for p in maps]
        masks = [keep_lungs(m) for m in masks] if postprocess else masks
        return (masks, feats) if features else masks


class Diagnoser:
    """Calibrated diagnosis probabilities from images and their lung masks.

    Args:
        model: a timm classifier returning (N, K) logits.
        spec: its weights spec (input size, lung input mode, margin, temperature, targets).
    """

    def __init__(self, model: torch.nn.Module, spec: WeightSpec) -> None:
        if spec.normalization != NORMALIZATION:
            raise ValueError(f"weights expect normalization {spec.normalization!r}; this version implements {NORMALIZATION!r}")
        if spec.lung_input not in LUNG_INPUTS:
            raise ValueError(f"weights expect lung input {spec.lung_input!r}; this version implements {LUNG_INPUTS}")
        self.model = model.to(memory_format=torch.channels_last)
        self.spec = spec
        self.size = int(spec.input_size[0])

    @classmethod
    def from_spec(cls, spec_path: str | Path | None = None) -> Diagnoser:
        """Load a weights spec (default: the shipped diagnosis model)."""
        model, spec = load_weights(spec_path, kind="diagnosis")
        return cls(model, spec)

    def view(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The lung view of one image (see :func:`covidcxr.data.classification.lung_view`)."""
        return lung_view(image, mask, self.size, whole=self.spec.lung_input == "whole", margin=self.spec.margin)

    def inputs(self, views: Sequence[tuple[torch.Tensor, torch.Tensor]], mode: str | None = None) -> torch.Tensor:
        """Model batch (N, 1, S, S) of lung views in ``mode`` (default: the spec's lung input)."""
        mode = mode or self.spec.lung_input
        return normalize(torch.stack([apply_view(v, lungs, mode) for v, lungs in views]))

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities (N, K): softmax of the logits divided by the spec's temperature."""
        with eval_mode(self.model):
            logits = self.model(batch.contiguous(memory_format=torch.channels_last)).float()
        return torch.softmax(logits / self.spec.temperature, dim=1).numpy()

    def predict(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities (N, K) of images (H, W) in [0, 1] with their lung masks."""
        if not images:
            return np.zeros((0, len(self.spec.targets)), np.float32)
        return self.probabilities(self.inputs([self.view(im, m) for im, m in zip(images, masks)]))
