"""Stage 2: calibrated diagnosis probabilities from an image's lung view, and where they came from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import normalize
from ..io.enhance import enhance
from ..views import LUNG_INPUTS, apply_view, cam_maps, heads_inputs, lung_view, to_image
from .lungs import check_normalization
from .runners import Runner, load_runner


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


@dataclass
class Reading:
    """What stage 2 answers for a batch: probabilities, the class each headline reads, and its heat map."""

    probabilities: np.ndarray  # (N, K) calibrated, over the spec's targets
    called: np.ndarray  # (N,) int: the class index the headline reads (see :func:`headline`)
    heatmaps: list[np.ndarray | None]  # (H, W) in [0, 1] per image: evidence for the called class; None without


class Diagnoser(ABC):
    """Stage 2: calibrated probabilities over ``spec.targets`` from images and their lung masks.

    Two kinds, each a subclass: :class:`CnnDiagnoser` (a classifier on the lung view, Grad-CAM)
    and :class:`FindingsDiagnoser` (the source-blind design, which also reads the lung mask on its
    backbone's grid and the image's finding facts). :meth:`from_spec` and :func:`diagnoser_for`
    pick the kind from the graph's inputs. Both graphs return their class-activation maps beside
    the logits, so the heat map costs no second pass.
    """

    reads_facts = False  # the severity scorer's finding facts are an input
    saliency_method = "heat map"

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
        self.whole = spec.lung_input == "whole"

    @classmethod
    def from_spec(
        cls, spec_path: str | Path | None = None, backend: str = "auto", onnx_dir: str | Path | None = None
    ) -> Diagnoser:
        """Load a weights spec (default: the shipped diagnosis model) as the diagnoser of its kind."""
        return diagnoser_for(load_runner("diagnosis", spec_path, backend, onnx_dir))

    @property
    def model(self):
        """The PyTorch module (evaluations read its features); only on the torch backend."""
        return self.runner.model

    @property
    def threshold(self) -> float | None:
        """P(abnormal) at and above which the headline reads disease (None: the spec has no operating point)."""
        return self.spec.operating_point.get("p_abnormal")

    @property
    def has_image_map(self) -> bool:
        return True

    def view(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lung view of one image and its mask, (1, S, S) each, enhanced as the spec says (after the resize)."""
        view, lungs = lung_view(image, mask, self.size, whole=self.whole, margin=self.spec.margin)
        return enhance(view[0], self.spec.enhancement)[None], lungs

    @abstractmethod
    def inputs(self, views: Sequence[tuple[np.ndarray, np.ndarray]], facts=None) -> dict:
        """The graph's named inputs for lung views (and finding facts)."""

    def read(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], facts=None, saliency: bool = True
    ) -> Reading:
        """Stage 2 on images (H, W) in [0, 1] with their lung masks (and finding facts (N, F)).

        The heat map of each image is the called class's map placed into the image (None each
        without ``saliency``, or for a model without an image map).
        """
        if not len(images):
            return Reading(np.zeros((0, len(self.targets)), np.float32), np.zeros(0, int), [])
        views = [self.view(im, m) for im, m in zip(images, masks, strict=True)]
        logits, cam = self.runner.run(**self.inputs(views, facts))
        probs = softmax(logits / self.spec.temperature)
        called = headline(probs, self.targets, self.spec.operating_point)
        heatmaps: list[np.ndarray | None] = [None] * len(images)
        if saliency and self.has_image_map:
            maps = cam_maps(cam, called.tolist(), self.size)
            heatmaps = [
                to_image(m, mask, self.spec.margin, whole=self.whole) for m, mask in zip(maps, masks, strict=True)
            ]
        return Reading(probs, called, heatmaps)

    def predict(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], facts=None) -> np.ndarray:
        """Calibrated probabilities (N, K) of images (H, W) in [0, 1] with their lung masks (and facts)."""
        return self.read(images, masks, facts, saliency=False).probabilities


class CnnDiagnoser(Diagnoser):
    """A transfer-learned classifier (timm) on the lung view: graph ``x`` -> logits and Grad-CAM of every class."""

    saliency_method = "Grad-CAM"

    def inputs(self, views, facts=None) -> dict:
        return {"x": normalize(np.stack([apply_view(v, lungs, self.spec.lung_input) for v, lungs in views]))}

    def probabilities(self, x) -> np.ndarray:
        """Calibrated probabilities (N, K) of normalized views (N, 1, S, S) (evaluations over stored views)."""
        logits, _ = self.runner.run(x=np.asarray(x, np.float32))
        return softmax(logits / self.spec.temperature)


class FindingsDiagnoser(Diagnoser):
    """The source-blind design (:class:`covidcxr.models.source_blind.SourceBlindHeads`).

    Linear heads on the finding facts and, unless it is facts only, frozen ImageNet features
    pooled inside the lungs; its class-activation map is exact (see the model's docstring).
    """

    reads_facts = True
    saliency_method = "class activation"

    @property
    def has_image_map(self) -> bool:
        """False for a findings-only model: it has no map over the view (its evidence is the lesions)."""
        return bool(self.spec.model_kwargs.get("image", True))

    def inputs(self, views, facts=None) -> dict:
        n_facts = int(self.spec.model_kwargs.get("n_facts", 0))
        return heads_inputs(views, self.spec.lung_input, self.size // 32, facts, n_facts)


def diagnoser_for(runner: Runner) -> Diagnoser:
    """The diagnoser of a loaded model's kind: a graph that reads more than ``x`` is the source-blind design."""
    return FindingsDiagnoser(runner) if set(runner.inputs) - {"x"} else CnnDiagnoser(runner)
