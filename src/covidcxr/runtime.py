"""The pipeline on onnxruntime: NumPy preprocessing and ONNX models, no PyTorch import.

``covidcxr export onnx --out DIR`` writes the models; ``covidcxr predict --backend
onnxruntime --onnx-dir DIR`` (and ``serve``) read them through the classes here, which
offer the interface :class:`covidcxr.predict.Pipeline` uses. Preprocessing is the NumPy
code both backends share (:mod:`covidcxr.enhance`, :mod:`covidcxr.resize`,
:mod:`covidcxr.views`, :func:`covidcxr.io.normalize`), so the two backends differ only in
the network runtime.
Saliency comes from the diagnosis graph's Grad-CAM output (see :mod:`covidcxr.export`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .enhance import enhance
from .io import NORMALIZATION, normalize
from .postprocess import geometry, keep_lungs
from .resize import resize_aa, resize_bilinear
from .severity import SeverityScorer
from .specs import SHIPPED, WeightSpec, sha256_file
from .views import LUNG_INPUTS, apply_view, cam_maps, heads_inputs, lung_view


def default_onnx_dir() -> Path:
    """Where ``covidcxr export onnx`` writes by default: ``$COVIDCXR_CACHE/onnx`` or ``~/.cache/covidcxr/onnx``."""
    base = os.environ.get("COVIDCXR_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "covidcxr") / "onnx"


class OrtModel:
    """An ONNX model named by a weights spec; the file's sha256 is checked before loading.

    Calling it with arrays (in the graph's input order) returns the list of its outputs.
    """

    def __init__(self, spec_path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RuntimeError("the onnxruntime backend needs the infer extra: pip install 'covidcxr[infer]'") from err

        if not spec_path.is_file():
            raise FileNotFoundError(
                f"{spec_path}: ONNX weights spec not found; run `covidcxr export onnx --out {spec_path.parent}` first"
            )
        self.spec = WeightSpec.from_json(spec_path)
        path = spec_path.parent / self.spec.file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX file named by {spec_path.name} not found")
        if sha256_file(path) != self.spec.sha256:
            raise ValueError(f"{path}: sha256 does not match its spec; export again")
        if self.spec.normalization != NORMALIZATION:
            raise ValueError(
                f"{path}: expects normalization {self.spec.normalization!r}; this version implements {NORMALIZATION!r}"
            )
        options = ort.SessionOptions()
        # No spin-waiting: each of the pipeline's five sessions has its own thread pool, and
        # threads that spin after a run take the cores from the NumPy work and the next
        # session (measured on 2 cores: one image 169 ms spinning, 81 ms without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def named(self, **arrays: np.ndarray) -> list[np.ndarray]:
        """Run with inputs by name; names the graph does not read (the exporter drops unused inputs) are left out."""
        return self.session.run(None, {n: np.ascontiguousarray(arrays[n], np.float32) for n in self.inputs})

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {n: np.ascontiguousarray(a, np.float32) for n, a in zip(self.inputs, arrays)})


class OrtLungSegmenter:
    """Stage 1 on onnxruntime: the same contract as :class:`covidcxr.pipeline.LungSegmenter`."""

    def __init__(self, net: OrtModel) -> None:
        self.net, self.spec = net, net.spec
        self.size = tuple(self.spec.input_size)

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        return normalize(np.stack([resize_aa(enhance(im, self.spec.enhancement), self.size)[None] for im in images]))

    def forward(self, images: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
        """Lung probability maps at each image's size, the model batch, the encoder feature list."""
        x = self.preprocess(images)
        logits, *feats = self.net(x)
        maps = [1 / (1 + np.exp(-resize_bilinear(lg[0], im.shape[-2:]))) for lg, im in zip(logits, images)]
        return maps, x, [x, *feats]

    def masks(self, maps: list[np.ndarray], postprocess: bool = True) -> list[np.ndarray]:
        masks = [p > self.spec.threshold for p in maps]
        return [keep_lungs(m) for m in masks] if postprocess else masks

    def segment(self, images: list[np.ndarray], postprocess: bool = True) -> list[np.ndarray]:
        return self.masks(self.forward(images)[0], postprocess) if images else []


class OrtDiagnoser:
    """Stage 2 on onnxruntime: the same contract as :class:`covidcxr.pipeline.Diagnoser`."""

    def __init__(self, net: OrtModel) -> None:
        self.net, self.spec = net, net.spec
        if self.spec.lung_input not in LUNG_INPUTS:
            raise ValueError(
                f"weights expect lung input {self.spec.lung_input!r}; this version implements {LUNG_INPUTS}"
            )
        self.size = int(self.spec.input_size[0])
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def view(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        view, lungs = lung_view(image, mask, self.size, whole=self.spec.lung_input == "whole", margin=self.spec.margin)
        return enhance(view[0], self.spec.enhancement)[None], lungs

    def inputs(self, views, mode: str | None = None) -> np.ndarray:
        return normalize(np.stack([apply_view(v, lungs, mode or self.spec.lung_input) for v, lungs in views]))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        logits, cam = self.net(batch)
        self._last = (batch, cam)  # saliency of the same batch reuses this pass
        z = logits / self.spec.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def saliency(self, batch: np.ndarray, targets: list[int]) -> np.ndarray:
        """Grad-CAM maps (N, S, S) in [0, 1], as :class:`covidcxr.saliency.GradCam` returns them."""
        cam = self._last[1] if self._last is not None and self._last[0] is batch else self.net(batch)[1]
        maps = np.maximum(resize_bilinear(cam[np.arange(len(targets)), targets], batch.shape[-2:]), 0)
        return maps / np.maximum(maps.reshape(len(maps), -1).max(axis=1), 1e-12)[:, None, None]


class OrtHeadsDiagnoser(OrtDiagnoser):
    """The source-blind stage 2 on onnxruntime: the contract of :class:`covidcxr.pipeline.HeadsDiagnoser`."""

    reads_facts = True
    saliency_method = "class activation"

    def inputs(self, views, mode: str | None = None, facts=None) -> dict:
        return heads_inputs(
            views, mode or self.spec.lung_input, self.size // 32, facts, int(self.spec.model_kwargs.get("n_facts", 0))
        )

    def probabilities(self, batch: dict) -> np.ndarray:
        logits, cam = self.net.named(x=batch["x"], weights=batch["weights"], facts=batch["facts"])
        self._last = (batch, cam)
        z = logits / self.spec.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def saliency(self, batch: dict, targets: list[int]) -> np.ndarray:
        if not self.spec.model_kwargs.get("image", True):  # findings only, as HeadsDiagnoser
            return [None] * len(targets)
        if self._last is None or self._last[0] is not batch:
            self.probabilities(batch)
        return cam_maps(self._last[1], targets, self.size)


class OrtGate:
    """The input gate on onnxruntime: P(frontal chest X-ray) from encoder features and lung masks."""

    def __init__(self, net: OrtModel) -> None:
        self.net, self.spec = net, net.spec

    def probability(self, features: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
        x = np.concatenate([np.asarray(features, np.float32), np.stack([geometry(m) for m in masks])], axis=1)
        return 1 / (1 + np.exp(-self.net(x)[0]))


def load_components(onnx_dir: str | Path | None = None, severity: bool = True) -> tuple:
    """(segmenter, diagnoser, gate, gate spec, severity scorer or None) for :class:`covidcxr.predict.Pipeline`."""
    folder = Path(onnx_dir) if onnx_dir else default_onnx_dir()
    model = {kind: (lambda k=kind: OrtModel(folder / f"{SHIPPED[k]}.json")) for kind in SHIPPED}
    diagnosis = model["diagnosis"]()
    diagnoser = (OrtHeadsDiagnoser if diagnosis.spec.architecture == "source_blind_mobilenet_v2" else OrtDiagnoser)(
        diagnosis
    )
    segmenter, gate = OrtLungSegmenter(model["lungs"]()), OrtGate(model["gate"]())
    scorer = None
    if severity:
        lesions, head = model["lesions"](), model["severity"]()
        scorer = SeverityScorer(
            lambda enc: 1 / (1 + np.exp(-lesions(*enc)[0])), lesions.spec, lambda a, b: tuple(head(a, b)), head.spec
        )
    return segmenter, diagnoser, gate, gate.spec, scorer
