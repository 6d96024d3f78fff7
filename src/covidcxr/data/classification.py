"""Diagnosis samples: frontal chest X-rays with one of the three classes, and the lung input.

Stage 2 reads the lungs that stage 1 found: by default the bounding box of the lung mask
with a margin (``crop``), or the whole image with everything outside the lungs set to 0
(``masked``). :func:`lung_input` is the one code path for training and inference.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..io import normalize
from ..views import LUNG_INPUTS, VIEW_MODES, apply_view, lung_box, lung_input, lung_view
from .labels import CLASSES, is_frontal_xray, label_of


def classification_samples(records: list[dict], split: str | None = None) -> tuple[list[dict], Counter]:
    """Frontal X-ray records with a class; and the count of each reason a record was left out.

    Returns:
        (samples: the records plus ``label`` (index into ``CLASSES``) and ``label_name``,
        excluded: Counter of ``"<dataset>: <reason>"``).
    """
    samples, excluded = [], Counter()
    for rec in records:
        if split is not None and rec["split"] != split:
            continue
        if not is_frontal_xray(rec):
            excluded[f"{rec['dataset']}: not a frontal X-ray ({rec['modality']}, view {rec['view'] or 'blank'})"] += 1
            continue
        name = label_of(rec["dataset"], rec["finding"])
        if name is None:
            excluded[f"{rec['dataset']}: finding {rec['finding']!r} excluded"] += 1
            continue
        samples.append({**rec, "label": CLASSES.index(name), "label_name": name})
    return samples, excluded


def first_per_group(samples: list[dict], limit: int, keys: tuple[str, ...] = ("dataset",)) -> list[dict]:
    """At most ``limit`` samples of each group (the values of ``keys``), in order; 0 keeps all."""
    if not limit:
        return samples
    seen: Counter = Counter()
    kept = []
    for s in samples:
        group = tuple(s[k] for k in keys)
        seen[group] += 1
        if seen[group] <= limit:
            kept.append(s)
    return kept


class DiagnosisDataset(Dataset):
    """Stored lung views (uint8) with labels; augmentation, view mode and normalization per item.

    Args:
        images: (N, S, S) uint8 lung views; lungs: (N, S, S) bool masks of the views.
        labels: (N,) class indices.
        mode: the view mode applied after augmentation.
        transform: paired (image, mask) transform, e.g. :func:`diagnosis_augment`.
    """

    def __init__(
        self, images: np.ndarray, lungs: np.ndarray, labels: np.ndarray, mode: str = "crop", transform=None
    ) -> None:
        if mode not in VIEW_MODES:
            raise ValueError(f"view mode must be one of {VIEW_MODES}, got {mode!r}")
        self.images, self.lungs, self.labels = images, lungs, np.asarray(labels)
        self.mode, self.transform = mode, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image = torch.from_numpy(self.images[i]).float()[None] / 255
        lungs = torch.from_numpy(self.lungs[i]).float()[None]
        if self.transform is not None:
            image, lungs = self.transform(tv_tensors.Image(image), tv_tensors.Mask(lungs))
            image, lungs = image.as_subclass(torch.Tensor), lungs.as_subclass(torch.Tensor)
        return {"image": normalize(apply_view(image, lungs, self.mode)), "lungs": lungs, "label": int(self.labels[i])}


__all__ = [
    "CLASSES",
    "LUNG_INPUTS",
    "VIEW_MODES",
    "DiagnosisDataset",
    "apply_view",
    "classification_samples",
    "first_per_group",
    "lung_box",
    "lung_input",
    "lung_view",
]
