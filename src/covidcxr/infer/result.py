"""What the reading of one image gives: the fields of a ``predictions.jsonl`` row, and the arrays behind its PNGs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Result:
    """One image's reading; :meth:`to_dict` is its ``predictions.jsonl`` row.

    A refused or unreadable image has ``error`` (a sentence; each front end adds its own way to
    read a refused image anyway, see :attr:`overridable`) and, when the gate refused it,
    ``refusal_reason`` (a code); the rest is then empty. Arrays: ``lung_mask`` (H, W) bool and
    ``heatmap`` (H, W) float in [0, 1] at the image's own size; ``lesions`` (K, S, S) bool and
    ``zones`` (S, S) uint8 on the lung model's input grid. :meth:`save` writes what ``covidcxr predict``
    writes for it.
    """

    path: str | None = None
    error: str | None = None
    refusal_reason: str | None = None
    probabilities: dict[str, float] | None = None
    prediction: str | None = None
    uncertain: bool | None = None
    uncertain_reason: str | None = None
    #: Every reason the reading is uncertain (``{"code", "text"}``, contradictions first); ``uncertain_reason`` is the first's text.
    uncertain_reasons: list[dict] = field(default_factory=list)
    #: The RSNA reporting category (:func:`covidcxr.infer.categories.rsna_category`); None without the findings.
    category: dict | None = None
    findings: dict | None = None
    severity: dict | None = None
    warnings: list[str] = field(default_factory=list)
    gate_probability: float | None = None
    saliency_method: str | None = None
    saliency_in_lungs: float | None = None
    model: dict = field(default_factory=dict)
    backend: str | None = None
    lung_mask: np.ndarray | None = field(default=None, repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    lesions: np.ndarray | None = field(default=None, repr=False)
    zones: np.ndarray | None = field(default=None, repr=False)
    #: The image as read, (H, W) float32 in [0, 1]: kept by ``Predictor.predict`` for :meth:`save`'s report.
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the image was read (not refused, not failed)."""
        return self.error is None

    @property
    def overridable(self) -> bool:
        """True when the gate refused the image and reading without it would read it: every refusal but a blank image's."""
        return self.refusal_reason is not None and self.refusal_reason != "blank"

    @property
    def lung_area(self) -> float | None:
        return None if self.lung_mask is None else round(float(self.lung_mask.mean()), 4)

    def to_dict(self, files: dict[str, str | None] | None = None) -> dict:
        """The JSON row; ``files`` names the PNGs written for it (``lung_mask``, ``heatmap``, ``report``)."""
        if not self.ok:
            row = {"path": self.path, "error": self.error}
            if self.refusal_reason is not None:
                row["refusal_reason"] = self.refusal_reason
            return row
        files = files or {}
        row = {"path": self.path, "probabilities": self.probabilities, "prediction": self.prediction}
        row |= {"uncertain": self.uncertain, "uncertain_reason": self.uncertain_reason}
        row |= {"uncertain_reasons": self.uncertain_reasons, "category": self.category}
        row |= {key: files.get(key) for key in ("lung_mask", "heatmap", "report")}
        row["model"] = self.model
        if self.backend is not None:
            row["backend"] = self.backend
        row["warnings"] = self.warnings
        row["lung_area"] = self.lung_area
        row["gate_probability"] = round(self.gate_probability if self.gate_probability is not None else np.nan, 4)
        if self.saliency_in_lungs is not None:  # null for a map without evidence (nothing to share out)
            share = float(self.saliency_in_lungs)
            row["saliency_in_lungs"] = round(share, 4) if np.isfinite(share) else None
        if self.findings is not None:
            row["findings"] = self.findings
        if self.severity is not None:
            row["severity"] = self.severity
        return row

    def save(self, folder: str | Path, stem: str | None = None, report: bool = True) -> dict:
        """Write what ``covidcxr predict`` writes for this reading into ``folder``; returns its JSON row.

        ``<stem>_lungs.png``, ``<stem>_heatmap.png``, ``<stem>_report.png`` and the row appended to
        ``folder/predictions.jsonl`` (a refused or unreadable image: the row only).

        Args:
            folder: created if missing.
            stem: the files' name before ``_lungs.png`` (default: the input file's name without its suffix,
                else ``image``).
            report: write the report PNG too (it needs :attr:`image`, which ``Predictor.predict`` keeps).

        Raises:
            ValueError: ``report`` on a result that holds no image (``Predictor.run`` keeps none).
        """
        from ..predict import write_outputs  # the one writer of a reading's files, shared with the command line

        if report and self.ok and self.image is None:
            raise ValueError(
                "this result holds no image for the report (Predictor.run keeps none): read it with "
                "Predictor.predict, or save(folder, report=False)"
            )
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or (Path(self.path).stem if self.path and not self.path.startswith("input ") else "image")
        row = write_outputs(self, self.image, stem, out, report)
        with open(out / "predictions.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        return row
