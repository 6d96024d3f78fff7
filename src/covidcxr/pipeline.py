"""From image to lungs to diagnosis: the predictors used by every command and service.

``LungSegmenter`` (stage 1) rebuilds preprocessing from the weights spec (enhancement, input
size, resize rule, normalization), runs the model on a batch, brings the probabilities back
to each image's own pixel size and keeps the two lungs; it can also hand out the encoder's
pooled features, which the input gate reads. ``Diagnoser`` (stage 2) turns an image and its
lung mask into the lung view its weights were trained on (enhanced as the spec says) and
returns calibrated probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data.transforms import upsample_logits
from .enhance import enhance
from .gate import pooled_features
from .io import NORMALIZATION, normalize
from .models import WeightSpec, eval_mode, load_weights
from .postprocess import keep_lungs
from .resize import resize_aa
from .views import LUNG_INPUTS, apply_view, cam_maps, heads_inputs, lung_view


class LungSegmenter:
    """Lung masks for images of any size.

    Args:
        model: segmentation network returning (N, 1, h, w) logits.
        spec: the weights spec the model was loaded with.
    """

    def __init__(self, model: torch.nn.Module, spec: WeightSpec) -> None:
        if spec.normalization != NORMALIZATION:
            raise ValueError(
                f"weights expect normalization {spec.normalization!r}; this version implements {NORMALIZATION!r}"
            )
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
        """Images (H, W) in [0, 1] -> model batch (N, 1, *input_size): enhanced (spec), resized, normalized."""
        # NumPy: the same pixels on every backend. Enhancement sees the full-size image, as in training.
        batch = np.stack([resize_aa(enhance(im, self.spec.enhancement), self.size)[None] for im in images])
        return torch.from_numpy(normalize(batch))

    @torch.inference_mode()
    def forward(self, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], torch.Tensor, list[torch.Tensor]]:
        """Lung probability maps at each image's own size, the model batch, and the encoder's feature maps.

        The encoder's feature list (smp order, finest first) is what the input gate and the
        lesion decoder read, so the encoder runs once per image for all of them.
        """
        captured: list[list[torch.Tensor]] = []
        hook = self.model.net.encoder.register_forward_hook(lambda _m, _i, out: captured.append(out))
        x = self.preprocess(images).contiguous(memory_format=torch.channels_last)
        try:
            with eval_mode(self.model):
                logits = self.model(x).float()
        finally:
            hook.remove()
        maps = [torch.sigmoid(upsample_logits(lg[None], im.shape[-2:]))[0, 0].numpy() for lg, im in zip(logits, images)]
        return maps, x, captured[0]

    def probabilities(self, images: Sequence[np.ndarray], features: bool = False):
        """Lung probability maps, each at its image's own pixel size (float32 (H, W)).

        With ``features``, also the encoder's deepest feature map averaged over space,
        (N, C) float32, from the same forward pass.
        """
        if not images:
            return ([], np.zeros((0, 0), np.float32)) if features else []
        maps, _, encoder = self.forward(images)
        return (maps, pooled_features(encoder)) if features else maps

    def masks(self, maps: Sequence[np.ndarray], postprocess: bool = True) -> list[np.ndarray]:
        """Boolean masks from probability maps; ``postprocess`` keeps two lungs, fills holes."""
        masks = [p > self.spec.threshold for p in maps]
        return [keep_lungs(m) for m in masks] if postprocess else masks

    def segment(self, images: Sequence[np.ndarray], postprocess: bool = True, features: bool = False):
        """Boolean lung masks (H, W) at each image's own size; ``postprocess`` keeps two lungs, fills holes.

        With ``features``, returns ``(masks, encoder features (N, C))``.
        """
        maps, feats = self.probabilities(images, features=True) if features else (self.probabilities(images), None)
        masks = self.masks(maps, postprocess)
        return (masks, feats) if features else masks


class Diagnoser:
    """Calibrated diagnosis probabilities from images and their lung masks.

    Args:
        model: a timm classifier returning (N, K) logits.
        spec: its weights spec (input size, lung input mode, margin, temperature, targets).
    """

    def __init__(self, model: torch.nn.Module, spec: WeightSpec) -> None:
        if spec.normalization != NORMALIZATION:
            raise ValueError(
                f"weights expect normalization {spec.normalization!r}; this version implements {NORMALIZATION!r}"
            )
        if spec.lung_input not in LUNG_INPUTS:
            raise ValueError(f"weights expect lung input {spec.lung_input!r}; this version implements {LUNG_INPUTS}")
        self.model = model.to(memory_format=torch.channels_last)
        self.spec = spec
        self.size = int(spec.input_size[0])
        self._cam = None

    @classmethod
    def from_spec(cls, spec_path: str | Path | None = None) -> Diagnoser:
        """Load a weights spec (default: the shipped diagnosis model)."""
        model, spec = load_weights(spec_path, kind="diagnosis")
        return cls(model, spec)

    def view(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The lung view of one image and its lung mask, (1, S, S) each (see :func:`covidcxr.views.lung_view`).

        The view is enhanced as the spec says, after the resize: training stored views made so.
        """
        view, lungs = lung_view(image, mask, self.size, whole=self.spec.lung_input == "whole", margin=self.spec.margin)
        return enhance(view[0], self.spec.enhancement)[None], lungs

    def inputs(self, views: Sequence[tuple[torch.Tensor, torch.Tensor]], mode: str | None = None) -> torch.Tensor:
        """Model batch (N, 1, S, S) of lung views in ``mode`` (default: the spec's lung input)."""
        mode = mode or self.spec.lung_input
        return torch.from_numpy(normalize(np.stack([apply_view(v, lungs, mode) for v, lungs in views])))

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities (N, K): softmax of the logits divided by the spec's temperature."""
        with eval_mode(self.model):
            logits = self.model(batch.contiguous(memory_format=torch.channels_last)).float()
        return torch.softmax(logits / self.spec.temperature, dim=1).numpy()

    def saliency(self, batch: torch.Tensor, targets: list[int]) -> np.ndarray:
        """Grad-CAM maps (N, S, S) in [0, 1] of ``targets`` (see :class:`covidcxr.saliency.GradCam`)."""
        if self._cam is None:
            from .saliency import GradCam

            self._cam = GradCam(self.model, self.spec.architecture)
        return self._cam(batch, targets)

    def predict(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities (N, K) of images (H, W) in [0, 1] with their lung masks."""
        if not images:
            return np.zeros((0, len(self.spec.targets)), np.float32)
        return self.probabilities(self.inputs([self.view(im, m) for im, m in zip(images, masks)]))


class HeadsDiagnoser(Diagnoser):
    """Stage 2 of the source-blind design (:class:`covidcxr.models.source_blind.SourceBlindDiagnoser`).

    It reads the masked lung view, the lung mask on the backbone's last grid and the
    image's finding facts (:func:`covidcxr.findings.finding_facts`, from the severity
    scorer), and returns probabilities and the model's exact class-activation maps from one
    forward pass.
    """

    reads_facts = True
    saliency_method = "class activation"

    def __init__(self, model: torch.nn.Module, spec: WeightSpec) -> None:
        super().__init__(model, spec)
        self.grid = self.size // 32
        self._last: tuple[dict, torch.Tensor] | None = None

    def inputs(
        self,
        views: Sequence[tuple[np.ndarray, np.ndarray]],
        mode: str | None = None,
        facts: Sequence[np.ndarray] | None = None,
    ) -> dict:
        """The model's three inputs: ``x`` (N, 1, S, S), lung ``weights`` (N, 1, h, w), ``facts`` (N, F)."""
        return heads_inputs(
            views, mode or self.spec.lung_input, self.grid, facts, int(self.spec.model_kwargs.get("n_facts", 0))
        )

    @torch.inference_mode()
    def probabilities(self, batch: dict) -> np.ndarray:
        with eval_mode(self.model):
            logits, cam = self.model(*(torch.from_numpy(batch[k]) for k in ("x", "weights", "facts")))
        self._last = (batch, cam)
        return torch.softmax(logits.float() / self.spec.temperature, dim=1).numpy()

    def predict(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
        raise TypeError(
            f"{self.spec.name} reads the severity scorer's findings besides the lungs: run it through covidcxr.predict.Pipeline"
        )

    def saliency(self, batch: dict, targets: list[int]) -> np.ndarray:
        """Class-activation maps (N, S, S) in [0, 1] of ``targets``, from the same pass as the probabilities."""
        if self.model.backbone is None:  # findings only: no map over the view (the pipeline shows the lesions)
            return [None] * len(targets)
        if self._last is None or self._last[0] is not batch:
            self.probabilities(batch)
        return cam_maps(self._last[1].numpy(), targets, self.size)


def load_diagnoser(spec_path: str | Path | None = None) -> Diagnoser:
    """The stage-2 predictor a diagnosis spec needs: :class:`HeadsDiagnoser` or :class:`Diagnoser`."""
    model, spec = load_weights(spec_path, kind="diagnosis")
    cls = HeadsDiagnoser if spec.architecture == "source_blind_mobilenet_v2" else Diagnoser
    return cls(model, spec)
