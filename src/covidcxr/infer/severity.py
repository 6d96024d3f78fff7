"""Severity from the lungs alone: lesions, Brixia zones, geographic extent and opacity.

The lesion model reads the lungs-only view (:func:`covidcxr.views.lungs_only`: the image with
everything outside the stage-1 outline black), and the severity head reads the features of
:func:`covidcxr.infer.zones.severity_features` on that view and the lesion model's own
encoder. So, for a given lung outline, no pixel outside the lungs can change a finding. Both
models run on a :class:`covidcxr.infer.runners.Runner`; everything else is NumPy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.severity import LESIONS, RANGES, ZONES
from ..specs import source_sha256
from ..views import LUNGS_ONLY, lungs_only, scale_lungs_only
from .lungs import sigmoid
from .runners import Runner, load_runner
from .zones import IMAGE_GROUPS, brixia_zones, columns, severity_features


class SeverityScorer:
    """Lesions and severity scores from the stage-1 forward pass.

    Args:
        lesions: the lesion model's runner (graph input ``x``, the lungs-only view -> ``logits``, ``f1``-``f5``).
        head: the severity head's runner (``image_features``, ``zone_features`` -> ``scores``, ``zones``);
            its spec's ``model_kwargs`` name the feature groups it reads.
    """

    def __init__(self, lesions: Runner, head: Runner) -> None:
        self.lesion_runner, self.head_runner = lesions, head
        self.lesion_spec, self.head_spec = lesions.spec, head.spec
        if self.lesion_spec.normalization != LUNGS_ONLY:
            raise ValueError(
                f"lesion weights {self.lesion_spec.name} read {self.lesion_spec.normalization!r} inputs; "
                f"this version feeds the lesion model the lungs alone ({LUNGS_ONLY!r}): retrain them "
                "with covidcxr train severity"
            )
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

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.lesion_spec.input_size)

    def lesions(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Lesion probabilities (N, len(LESIONS), S, S) of scaled lungs-only views, and the encoder's list [x, f1 ... f5]."""
        logits, *feats = self.lesion_runner.run(x=np.ascontiguousarray(x, np.float32))
        return sigmoid(logits), [x, *(np.asarray(f, np.float32) for f in feats)]

    def head(self, image_f: np.ndarray, zone_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, zones = self.head_runner.run(image_features=image_f, zone_features=zone_f)
        return scores, zones

    def score(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[dict]:
        """Severity of each image (H, W) in [0, 1] from its final lung mask (H, W) at the image's size.

        Only the pixels inside ``masks`` are read (the lesion model sees the lungs-only view).

        Returns:
            per image: ``severity`` (JSON-ready: ``geographic_extent``, ``opacity``, ``brixia``
            with zones A-F and ``global``, ``lesions`` with the affected share of each lung),
            ``lesions`` (len(LESIONS), S, S) bool inside the lungs and ``zones`` (S, S) uint8,
            both on the lung model's input grid (stretch them to the image's size to draw them).
        """
        views = [lungs_only(im, m, self.size) for im, m in zip(images, masks, strict=True)]
        if not views:
            return []
        x = scale_lungs_only(np.stack([v for v, _ in views])).astype(np.float32)
        lungs = np.stack([lu for _, lu in views])
        zones = np.stack([brixia_zones(m) for m in lungs])
        p, encoder = self.lesions(x)
        thr = self.lesion_spec.threshold
        image_f, zone_f = severity_features(x, encoder, lungs, p, thr, zones)
        scores, zone_scores = self.head(
            np.ascontiguousarray(image_f[:, self.image_cols]), np.ascontiguousarray(zone_f[:, :, self.zone_cols])
        )
        lo = IMAGE_GROUPS["lesions"][
            0
        ]  # per lung (right, left): mean probability of each lesion, then share above threshold
        out = []
        for i in range(len(views)):
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
