"""Severity from the stage-1 pass: lesions, Brixia zones, geographic extent and opacity.

The lesion decoder reads the lung encoder's feature maps (no second encoder pass); the
severity head reads the features of :func:`covidcxr.severity.severity_features`. Both models
run on a :class:`covidcxr.infer.runners.Runner`; everything else is NumPy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.severity import LESIONS, RANGES, ZONES
from ..io.resize import resize_nearest
from ..specs import ENCODER_FEATURES, source_sha256
from .lungs import sigmoid
from .runners import Runner, load_runner
from .zones import IMAGE_GROUPS, brixia_zones, columns, severity_features


class SeverityScorer:
    """Lesions and severity scores from the stage-1 forward pass.

    Args:
        lesions: the lesion decoder's runner (graph inputs ``x``, ``f1``-``f5``).
        head: the severity head's runner (``image_features``, ``zone_features`` -> ``scores``, ``zones``);
            its spec's ``model_kwargs`` name the feature groups it reads.
    """

    def __init__(self, lesions: Runner, head: Runner) -> None:
        self.lesion_runner, self.head_runner = lesions, head
        self.lesion_spec, self.head_spec = lesions.spec, head.spec
        wanted = self.head_spec.training.get("lesion_weights")
        if wanted and wanted != source_sha256(self.lesion_spec):
            raise ValueError(
                f"severity head {self.head_spec.name} was fitted on lesion weights {wanted[:12]}…, "
                f"not on {self.lesion_spec.sha256[:12]}…; pass the matching pair"
            )
        self.image_cols = columns(self.head_spec.model_kwargs["image_groups"], zone=False)
        self.zone_cols = columns(self.head_spec.model_kwargs["zone_groups"], zone=True)

    @classmethod
    def from_spec(
        cls,
        lesions: str | Path | None = None,
        severity: str | Path | None = None,
        backend: str = "auto",
        onnx_dir: str | Path | None = None,
    ) -> SeverityScorer:
        """The lesion decoder and severity head of two specs (default: shipped)."""
        return cls(
            load_runner("lesions", lesions, backend, onnx_dir), load_runner("severity", severity, backend, onnx_dir)
        )

    def lesions(self, encoder: list[np.ndarray]) -> np.ndarray:
        """Lesion probabilities (N, len(LESIONS), S, S) from the lung encoder's feature list."""
        return sigmoid(self.lesion_runner.run(**dict(zip(("x", *ENCODER_FEATURES), encoder, strict=True)))[0])

    def head(self, image_f: np.ndarray, zone_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, zones = self.head_runner.run(image_features=image_f, zone_features=zone_f)
        return scores, zones

    def score(self, x: np.ndarray, encoder: list[np.ndarray], masks: list[np.ndarray]) -> list[dict]:
        """Severity of each image from the lung model's batch ``x``, its encoder features and the final lung masks.

        Returns:
            per image: ``severity`` (JSON-ready: ``geographic_extent``, ``opacity``, ``brixia``
            with zones A-F and ``global``, ``lesions`` with the affected share of each lung),
            ``lesions`` (len(LESIONS), S, S) bool inside the lungs and ``zones`` (S, S) uint8,
            both on the lung model's input grid (stretch them to the image's size to draw them).
        """
        x = np.asarray(x, np.float32)
        encoder = [np.asarray(f, np.float32) for f in encoder]
        size = tuple(x.shape[-2:])
        lungs = np.stack([resize_nearest(np.asarray(m, bool), size) for m in masks])
        zones = np.stack([brixia_zones(m) for m in lungs])
        p = self.lesions(encoder)
        thr = self.lesion_spec.threshold
        image_f, zone_f = severity_features(x, encoder, lungs, p, thr, zones)
        scores, zone_scores = self.head(
            np.ascontiguousarray(image_f[:, self.image_cols]), np.ascontiguousarray(zone_f[:, :, self.zone_cols])
        )
        lo = IMAGE_GROUPS["lesions"][
            0
        ]  # per lung (right, left): mean probability of each lesion, then share above threshold
        out = []
        for i in range(len(masks)):
            zs = np.clip(zone_scores[i], *RANGES["zone"])
            shares = {
                name: {
                    side: round(float(image_f[i, lo + 4 * j + len(LESIONS) + k]), 4)
                    for j, side in enumerate(("right_lung", "left_lung"))
                }
                for k, name in enumerate(LESIONS)
            }
            severity = {
                "geographic_extent": round(float(np.clip(scores[i, 0], *RANGES["geographic_extent"])), 2),
                "opacity": round(float(np.clip(scores[i, 1], *RANGES["opacity"])), 2),
                "brixia": {**{z: round(float(v), 2) for z, v in zip(ZONES, zs)}, "global": round(float(zs.sum()), 2)},
                "lesions": shares,
            }
            out.append({"severity": severity, "lesions": (p[i] > thr) & lungs[i], "zones": zones[i]})
        return out
