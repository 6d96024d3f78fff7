"""The reading of a batch of images, as one story: gate, lungs, severity, diagnosis, where it looked.

:class:`Predictor` holds the four stages (:mod:`covidcxr.infer`), each on a runner of either
backend, and turns images (H, W) float32 in [0, 1] into :class:`~covidcxr.infer.result.Result`
objects: what ``covidcxr predict``, the web page and the Python API all return.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io import ImageReadError, image_from
from ..views import lesion_evidence, lung_share
from .categories import rsna_category
from .diagnosis import Diagnoser
from .findings import OPACITY_PRESENT, finding_facts, findings_summary
from .gate import UNGATED, Gate, blank_refusal
from .lungs import LungSegmenter
from .result import Result
from .runners import AUTO, resolve_backend
from .severity import SeverityScorer
from .uncertainty import Signals, outline_facts, uncertain_reasons

log = logging.getLogger(__name__)

#: Lung masks covering less (more) of the image than this get a warning.
LUNG_AREA_RANGE = (0.08, 0.75)
MIN_SIDE_WARN = 256
#: How to read an image the gate refused, said to a Python caller.
PYTHON_OVERRIDE = "Predictor.load(use_gate=False) forces a reading (research use)"


def image_warnings(image: np.ndarray, mask: np.ndarray) -> list[str]:
    """What a reader should know before trusting this image's reading."""
    h, w = image.shape
    out = []
    area = float(mask.mean())
    lo, hi = LUNG_AREA_RANGE
    if not lo <= area <= hi:
        out.append(
            f"the lungs found cover {area:.0%} of the image (expected {lo:.0%}-{hi:.0%}); "
            "check the lung outline before trusting the diagnosis"
        )
    if min(h, w) < MIN_SIDE_WARN:
        out.append(f"low resolution ({w}x{h} px); the models read lungs at 224-256 px, fine detail is lost")
    return out


class Predictor:
    """Stage 1, the gate, severity, stage 2 and saliency.

    Args:
        segmenter, diagnoser: the two stages.
        gate: the input gate (None: none); ``use_gate=False`` keeps it as a warning only.
        saliency: compute the heat map of the predicted class.
        severity: the severity scorer (needed by a diagnosis that reads the findings).
        show_severity: report the severity scores (False: computed for the diagnosis only).
    """

    def __init__(
        self,
        segmenter: LungSegmenter,
        diagnoser: Diagnoser,
        gate: Gate | None = None,
        use_gate: bool = True,
        saliency: bool = True,
        severity: SeverityScorer | None = None,
        show_severity: bool = True,
    ) -> None:
        if diagnoser.reads_facts and severity is None:
            raise ValueError(
                f"diagnosis model {diagnoser.spec.name} reads the lesion and severity findings; "
                "load a severity scorer with it"
            )
        self.segmenter, self.diagnoser, self.gate, self.severity = segmenter, diagnoser, gate, severity
        self.use_gate, self.saliency, self.show_severity = use_gate, saliency, show_severity

    @classmethod
    def load(
        cls,
        lungs: str | None = None,
        diagnosis: str | None = None,
        gate: str | None = None,
        use_gate: bool = True,
        saliency: bool = True,
        severity: bool = True,
        lesions: str | None = None,
        severity_head: str | None = None,
        backend: str = AUTO,
        onnx_dir: str | None = None,
    ) -> Predictor:
        """Every model from its spec (default: shipped) on ``backend``: ``torch`` (``.pt``) or ``onnxruntime``.

        ``auto`` (the default) is PyTorch where it is installed (``pip install 'covidcxr[train]'``), else
        onnxruntime. ``onnxruntime`` runs the ONNX graphs shipped in the package (or those ``covidcxr export
        onnx`` wrote to ``onnx_dir``) and imports no PyTorch. :attr:`backend` says which one runs.
        """
        backend = resolve_backend(backend)
        where = {"backend": backend, "onnx_dir": onnx_dir}
        try:
            diagnoser = Diagnoser.from_spec(diagnosis, **where)
            # A diagnosis that reads the findings needs the scorer; without severity only the scores are left out.
            needs = severity or diagnoser.reads_facts
            scorer = SeverityScorer.from_spec(lesions, severity_head, **where) if needs else None
            parts = LungSegmenter.from_spec(lungs, **where), Gate.from_spec(gate, **where)
        except ImportError as err:
            raise RuntimeError(
                f"the PyTorch backend needs the train extra ({err.name} is missing): "
                "pip install 'covidcxr[train]', or use the onnxruntime backend (--backend onnxruntime)"
            ) from err
        log.info("models on %s", backend)
        return cls(parts[0], diagnoser, parts[1], use_gate, saliency, scorer, show_severity=severity)

    def to(self, device: str) -> Predictor:
        """Run every PyTorch model on ``device`` (``"cuda"``: a GPU); only on the torch backend.

        Raises:
            ValueError: A model runs on onnxruntime, which this does not move.
        """
        runners = [self.segmenter.runner, self.diagnoser.runner]
        runners += [self.gate.runner] if self.gate is not None else []
        runners += [self.severity.lesion_runner, self.severity.head_runner] if self.severity is not None else []
        if not all(hasattr(r, "to") for r in runners):
            raise ValueError(f"only the torch backend runs on {device}; load the Predictor with backend='torch'")
        for runner in runners:
            runner.to(device)
        return self

    @property
    def backend(self) -> str:
        """Where the models run: ``torch`` or ``onnxruntime``."""
        return getattr(self.segmenter.runner, "backend", "torch")

    @property
    def models(self) -> dict:
        """Name and sha256 of every weight file used."""
        specs = {"lungs": self.segmenter.spec, "diagnosis": self.diagnoser.spec}
        if self.gate is not None:
            specs["gate"] = self.gate.spec
        if self.severity is not None and (self.show_severity or self.diagnoser.reads_facts):
            specs |= {"lesions": self.severity.lesion_spec, "severity": self.severity.head_spec}
        return {k: {"name": s.name, "sha256": s.sha256} for k, s in specs.items()}

    def predict(self, x: Any) -> Result | list[Result]:
        """Read one X-ray, or a list of them: paths, file bytes, PIL images or NumPy arrays.

        Arrays may be uint8, uint16 or float, 2-D or RGB/RGBA (see :func:`covidcxr.io.image_from`).
        An input that cannot be read, or that the gate refuses, gives a :class:`Result` whose
        ``error`` says why; nothing is raised for bad images.

        Returns:
            A :class:`Result` for one input, a list of them (same order) for a list or tuple.
        """
        single = not isinstance(x, list | tuple)
        items = [x] if single else list(x)
        results: list[Result | None] = [None] * len(items)
        good = []
        for i, item in enumerate(items):
            name = str(item) if isinstance(item, str | os.PathLike) else f"input {i}"
            try:
                good.append((i, name, image_from(item, name=name)))
            except ImageReadError as err:
                results[i] = Result(path=name, error=str(err), model=self.models)
        for (i, name, image), res in zip(good, self.run([im for _, _, im in good]), strict=True):
            res.path, res.image = name, image  # kept for Result.save's report
            if res.error:
                res.error = f"{name}: {res.error}" + (f"; {PYTHON_OVERRIDE}" if res.overridable else "")
            results[i] = res
        return results[0] if single else results

    def run(self, images: Sequence[np.ndarray]) -> list[Result]:
        """One :class:`Result` per image (H, W) float32 in [0, 1], in order."""
        models = self.models
        results = [Result(model=models, backend=self.backend) for _ in images]
        for res, image in zip(results, images, strict=True):
            blank = blank_refusal(image)
            if blank is not None:
                res.error, res.refusal_reason = blank.describe(), blank.reason
        todo = [i for i, r in enumerate(results) if r.ok]
        if not todo:
            return results
        lungs = self.segmenter.forward([images[i] for i in todo])
        masks = self.segmenter.masks(lungs.maps)
        decisions = (
            self.gate.decide([images[i] for i in todo], lungs.encoder, masks)
            if self.gate is not None
            else [UNGATED] * len(todo)
        )
        rows = []  # rows of the stage-1 batch that go on
        for j, (i, decision) in enumerate(zip(todo, decisions, strict=True)):
            res = results[i]
            res.lung_mask, res.gate_probability = masks[j], decision.probability
            if not decision.accepted and self.use_gate:
                res.error, res.refusal_reason = decision.describe(), decision.reason
                continue
            if not decision.accepted:
                res.warnings.append(f"gate skipped (--no-gate): {decision.describe()}")
            res.warnings.extend(image_warnings(images[i], masks[j]))
            rows.append(j)
        if rows:
            read = [results[todo[j]] for j in rows]
            facts = self._severity(read, [images[todo[j]] for j in rows])
            self._diagnose(read, [images[todo[j]] for j in rows], facts)
        for res in results:
            if not res.ok:
                res.lung_mask = None
        return results

    def _severity(self, read: list[Result], images: list[np.ndarray]) -> list[np.ndarray] | None:
        """Lesions, zones and scores into each result; the finding facts stage 2 reads (None without a scorer)."""
        if self.severity is None:
            return None
        scores = self.severity.score(images, [r.lung_mask for r in read])
        for res, s in zip(read, scores, strict=True):
            res.severity, res.lesions, res.zones = s["severity"], s["lesions"], s["zones"]
        return [finding_facts(s["severity"], s["lesions"], s["zones"]) for s in scores]

    def _diagnose(self, read: list[Result], images: list[np.ndarray], facts: list[np.ndarray] | None) -> None:
        """Probabilities, findings and the heat map (image space) into each result."""
        diagnoser = self.diagnoser
        reading = diagnoser.read(images, [r.lung_mask for r in read], facts, saliency=self.saliency)
        threshold = diagnoser.threshold if diagnoser.threshold is not None else OPACITY_PRESENT
        for j, (res, p, heatmap, image, k) in enumerate(
            zip(read, reading.probabilities, reading.heatmaps, images, reading.called, strict=True)
        ):
            res.probabilities = {c: float(v) for c, v in zip(diagnoser.targets, p, strict=True)}
            res.prediction = diagnoser.targets[int(k)]
            if facts is not None:
                res.findings = findings_summary(res.probabilities, facts[j], threshold)
                opacity = res.findings["airspace_opacity"]
                res.category = rsna_category(facts[j], opacity["present"])
                signals = Signals(
                    p_abnormal=opacity["probability"],
                    threshold=threshold,
                    disease=res.prediction != "No finding",
                    extent=res.findings["geographic_extent"],
                    lesion_share=res.findings["lesion_share"],
                    min_side=int(min(image.shape)),
                    outline=outline_facts(res.lung_mask),
                    gate_probability=res.gate_probability if self.gate is not None else None,
                )
                res.uncertain_reasons = uncertain_reasons(signals, diagnoser.spec.uncertainty)
                res.uncertain_reason = res.uncertain_reasons[0]["text"] if res.uncertain_reasons else None
            res.uncertain = bool(res.uncertain_reasons)
            if heatmap is not None:
                res.saliency_method, res.heatmap = diagnoser.saliency_method, heatmap
            elif self.saliency and res.lesions is not None:  # findings only: the evidence is the lesions it measured
                res.saliency_method, res.heatmap = "lesion evidence", lesion_evidence(res.lesions, res.lung_mask)
            if res.heatmap is not None:
                res.saliency_in_lungs = lung_share(res.heatmap, res.lung_mask)
            if not self.show_severity:  # computed for the diagnosis only
                res.severity = res.lesions = res.zones = None
