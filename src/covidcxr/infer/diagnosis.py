"""Stage 2: calibrated diagnosis probabilities from an image's lung view, and where they came from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import normalize
from ..io.enhance import enhance
from ..views import LUNG_INPUTS, apply_view, cam_maps, heads_inputs, lung_view, to_image
from .lungs import check_normalization
from .runners import Runner, load_runner

SOURCE_BLIND = "source_blind_mobilenet_v2"


def p_abnormal(probs: np.ndarray, targets: Sequence[str]) -> np.ndarray:
    """P(airspace disease) = 1 - P(No finding) of probabilities (N, K) over ``targets``."""
    return 1.0 - np.asarray(probs, np.float64)[:, list(targets).index("No finding")]


def headline(probs: np.ndarray, targets: Sequence[str], operating_point: dict | None = None) -> np.ndarray:
    """The class index each row's headline reads, (N,) int, from probabilities (N, K) over ``targets``.

    With an operating point (the diagnosis spec's ``operating_point``, docs/experiments/operating-point.md)
    the headline is two decisions: disease when P(abnormal) >= ``p_abnormal``, else No finding; then
    COVID-19 when P(COVID-19 | abnormal) >= ``covid_given_abnormal``, else Other pneumonia. Without one
    (an older spec, or a CNN over other targets) it is the class with the largest probability.
    """
    probs = np.asarray(probs, np.float64)
    if not operating_point or "No finding" not in targets:
        return probs.argmax(1)
    t = list(targets)
    covid, other, normal = t.index("COVID-19"), t.index("Other pneumonia"), t.index("No finding")
    q = probs[:, covid] / np.maximum(probs[:, covid] + probs[:, other], 1e-12)
    disease = np.where(q >= operating_point.get("covid_given_abnormal", 0.5), covid, other)
    return np.where(p_abnormal(probs, t) >= operating_point["p_abnormal"], disease, normal)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Diagnoser:
    """Calibrated probabilities over ``spec.targets`` from images and their lung masks.

    Two kinds of weights: a CNN on the lung view (graph input ``x``), and the source-blind
    design (:class:`covidcxr.models.source_blind.SourceBlindDiagnoser`), which also reads the
    lung mask on its backbone's grid and the image's finding facts (``reads_facts``). Both
    graphs return their class-activation maps beside the logits, so saliency costs no second pass.
    """

    def __init__(self, runner: Runner) -> None:
        spec = runner.spec
        check_normalization(spec)
        if spec.lung_input not in LUNG_INPUTS:
            raise ValueError(
                f"{spec.name} expects lung input {spec.lung_input!r}; this version implements {LUNG_INPUTS}"
            )
        self.runner, self.spec = runner, spec
        self.size = int(spec.input_size[0])
        self.targets = list(spec.targets)
        self.reads_facts = spec.architecture == SOURCE_BLIND
        self.whole = spec.lung_input == "whole"
        self._last: tuple[dict, np.ndarray] | None = None

    @classmethod
    def from_spec(
        cls, spec_path: str | Path | None = None, backend: str = "auto", onnx_dir: str | Path | None = None
    ) -> Diagnoser:
        """Load a weights spec (default: the shipped diagnosis model)."""
        return cls(load_runner("diagnosis", spec_path, backend, onnx_dir))

    @property
    def model(self):
        """The PyTorch module (evaluations read its features); only on the torch backend."""
        return self.runner.model

    @property
    def saliency_method(self) -> str:
        return "class activation" if self.reads_facts else "Grad-CAM"

    @property
    def has_image_map(self) -> bool:
        """False for a findings-only model: it has no map over the view (its evidence is the lesions)."""
        return not self.reads_facts or bool(self.spec.model_kwargs.get("image", True))

    def view(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lung view of one image and its mask, (1, S, S) each, enhanced as the spec says (after the resize)."""
        view, lungs = lung_view(image, mask, self.size, whole=self.whole, margin=self.spec.margin)
        return enhance(view[0], self.spec.enhancement)[None], lungs

    def inputs(self, views: Sequence[tuple[np.ndarray, np.ndarray]], mode: str | None = None, facts=None) -> dict:
        """The graph's inputs: ``x`` (N, 1, S, S); the source-blind design also ``weights`` and ``facts``."""
        mode = mode or self.spec.lung_input
        if not self.reads_facts:
            return {"x": normalize(np.stack([apply_view(v, lungs, mode) for v, lungs in views]))}
        return heads_inputs(views, mode, self.size // 32, facts, int(self.spec.model_kwargs.get("n_facts", 0)))

    def probabilities(self, batch) -> np.ndarray:
        """Calibrated probabilities (N, K): softmax of the logits over the spec's temperature.

        ``batch``: :meth:`inputs`' dict, or the ``x`` array alone for a CNN.
        """
        batch = batch if isinstance(batch, dict) else {"x": np.asarray(batch, np.float32)}
        logits, cam = self.runner.run(**batch)
        self._last = (batch, cam)  # saliency of the same batch reuses this pass
        return softmax(logits / self.spec.temperature)

    def saliency(self, batch, targets: list[int]) -> np.ndarray | list[None]:
        """Maps (N, S, S) in [0, 1] over the view of each row's target class (None each without an image map)."""
        if not self.has_image_map:
            return [None] * len(targets)
        if self._last is None or self._last[0] is not batch:
            self.probabilities(batch)
        return cam_maps(self._last[1], targets, self.size)

    def to_image(self, view_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A map over the view placed into the full image (zeros outside the lung box)."""
        return to_image(view_map, mask, self.spec.margin, whole=self.whole)

    def predict(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], facts=None) -> np.ndarray:
        """Calibrated probabilities (N, K) of images (H, W) in [0, 1] with their lung masks (and facts)."""
        if not images:
            return np.zeros((0, len(self.targets)), np.float32)
        views = [self.view(im, m) for im, m in zip(images, masks, strict=True)]
        return self.probabilities(self.inputs(views, facts=facts))
