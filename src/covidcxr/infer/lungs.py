"""Stage 1: lung masks for images of any size, and the encoder features the later stages read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..io import NORMALIZATION, normalize
from ..io.enhance import enhance
from ..io.resize import resize_aa, resize_bilinear
from ..postprocess import keep_lungs
from .runners import Runner, load_runner


def sigmoid(z: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def check_normalization(spec) -> None:
    if spec.normalization != NORMALIZATION:
        raise ValueError(
            f"{spec.name} expects normalization {spec.normalization!r}; this version implements {NORMALIZATION!r}"
        )


class LungPass(NamedTuple):
    """One forward pass of stage 1."""

    maps: list[np.ndarray]  # lung probabilities, each at its image's own size
    x: np.ndarray  # the model batch (N, 1, S, S), normalised
    encoder: list[np.ndarray]  # the encoder's feature list, smp order: [x, f1 ... f5]


class LungSegmenter:
    """Lung masks for images of any size, from a weights spec's preprocessing and a runner.

    The spec gives enhancement, input size, resize rule and normalization; the probabilities
    come back at each image's own pixel size, and the encoder's feature maps (which the gate
    and the lesion decoder read) come from the same pass.
    """

    def __init__(self, runner: Runner) -> None:
        spec = runner.spec
        check_normalization(spec)
        if spec.resize != "stretch":
            raise ValueError(f"{spec.name} expects resize rule {spec.resize!r}; this version implements 'stretch'")
        self.runner, self.spec = runner, spec
        self.size = tuple(spec.input_size)

    @classmethod
    def from_spec(
        cls, spec_path: str | Path | None = None, backend: str = "auto", onnx_dir: str | Path | None = None
    ) -> LungSegmenter:
        """Load a weights spec (default: the shipped lung model)."""
        return cls(load_runner("lungs", spec_path, backend, onnx_dir))

    @property
    def model(self):
        """The PyTorch module (training reads its encoder); only on the torch backend."""
        return self.runner.model

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images (H, W) in [0, 1] -> model batch (N, 1, *input_size): enhanced (spec), resized, normalized."""
        # Enhancement sees the full-size image, as in training.
        return normalize(np.stack([resize_aa(enhance(im, self.spec.enhancement), self.size)[None] for im in images]))

    def forward(self, images: Sequence[np.ndarray]) -> LungPass:
        """Lung probability maps at each image's own size, the model batch and the encoder's feature list."""
        x = self.preprocess(images)
        logits, *feats = self.runner.run(x=x)
        maps = [sigmoid(resize_bilinear(lg[0], im.shape[-2:])) for lg, im in zip(logits, images, strict=True)]
        return LungPass(maps, x, [x, *feats])

    def masks(self, maps: Sequence[np.ndarray], postprocess: bool = True) -> list[np.ndarray]:
        """Boolean masks from probability maps; ``postprocess`` keeps two lungs, fills holes."""
        masks = [p > self.spec.threshold for p in maps]
        return [keep_lungs(m) for m in masks] if postprocess else masks

    def probabilities(self, images: Sequence[np.ndarray], features: bool = False):
        """Lung probability maps; with ``features`` also the gate's pooled encoder features (:func:`pooled_features`)."""
        if not images:
            return ([], np.zeros((0, 0), np.float32)) if features else []
        maps, _, encoder = self.forward(images)
        return (maps, pooled_features(encoder)) if features else maps

    def segment(self, images: Sequence[np.ndarray], postprocess: bool = True, features: bool = False):
        """Boolean lung masks (H, W) at each image's own size; with ``features``, ``(masks, features (N, C))``."""
        out = self.probabilities(images, features=features)
        maps, feats = out if features else (out, None)
        masks = self.masks(maps, postprocess)
        return (masks, feats) if features else masks


#: The gate's view of the encoder: the second-deepest map averaged over a LAYOUT x LAYOUT grid
#: (where things are: a lateral view or a CT slice is laid out unlike a frontal chest), beside
#: the deepest map averaged over the whole image (what is there).
LAYOUT = 4


def pooled_features(encoder: Sequence[np.ndarray]) -> np.ndarray:
    """The gate's input, (N, C4 * LAYOUT**2 + C5) float32: see :data:`LAYOUT`."""
    deep = np.asarray(encoder[-1], np.float32).mean(axis=(2, 3))
    f4 = np.asarray(encoder[-2], np.float32)
    n, c, h, w = f4.shape
    grid = f4.reshape(n, c, LAYOUT, h // LAYOUT, LAYOUT, w // LAYOUT).mean(axis=(3, 5)).reshape(n, -1)
    return np.concatenate([grid, deep], axis=1)
