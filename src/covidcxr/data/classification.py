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
from .labels import CLASSES, is_frontal_xray, label_of
from .transforms import resize_image

LUNG_INPUTS = ("crop", "masked", "whole")
#: What the classifier may be shown: the trained inputs, and the audit's counterfactual.
VIEW_MODES = (*LUNG_INPUTS, "lungs_blacked_out")


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


def lung_box(mask: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the mask grown by ``margin`` of its size per side.

    An empty mask gives the whole image (the caller should warn: no lungs were found).
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0, h, 0, w
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    my, mx = int(round((y1 - y0) * margin)), int(round((x1 - x0) * margin))
    return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


def lung_input(image: np.ndarray, mask: np.ndarray, mode: str = "crop", margin: float = 0.1) -> np.ndarray:
    """The part of an image the classifier sees.

    Args:
        image: (H, W) float in [0, 1].
        mask: (H, W) bool lung mask at the image's size.
        mode: ``crop`` (lung bounding box + margin), ``masked`` (crop, and pixels outside the
            lungs set to 0) or ``whole`` (the image unchanged; for shortcut studies).

    Returns:
        (h, w) float32 array.
    """
    if mode not in LUNG_INPUTS:
        raise ValueError(f"lung input mode must be one of {LUNG_INPUTS}, got {mode!r}")
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and lung mask {mask.shape} differ in size")
    if mode == "whole":
        return image.astype(np.float32, copy=False)
    y0, y1, x0, x1 = lung_box(mask, margin)
    out = image[y0:y1, x0:x1].astype(np.float32, copy=True)
    if mode == "masked":
        out[~mask[y0:y1, x0:x1]] = 0.0
    return out


def lung_view(image: np.ndarray, mask: np.ndarray, size: int, whole: bool = False, margin: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The lung region at the classifier's input size: the image and its lung mask.

    The bounding box of the lungs grown by ``margin`` (or, with ``whole``, the whole image) is
    resized, aspect not kept, to ``size`` x ``size``; the mask goes through the same resize.
    Training stores these views and inference computes them, so both see the same pixels.

    Returns:
        (image (1, size, size) float32 in [0, 1], lungs (1, size, size) float32 in {0, 1}).
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and lung mask {mask.shape} differ in size")
    y0, y1, x0, x1 = (0, image.shape[0], 0, image.shape[1]) if whole else lung_box(mask, margin)
    crop = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1], np.float32))
    lungs = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1], np.float32))
    return resize_image(crop, (size, size)).clamp(0, 1), (resize_image(lungs, (size, size)) > 0.5).float()


def apply_view(image: torch.Tensor, lungs: torch.Tensor, mode: str) -> torch.Tensor:
    """The pixels the classifier sees in ``mode`` (see ``VIEW_MODES``), before normalization.

    ``crop`` and ``whole`` show the view as is; ``masked`` sets everything outside the lungs to
    0; ``lungs_blacked_out`` sets the lungs to 0 (shortcut audit only).
    """
    if mode in ("crop", "whole"):
        return image
    if mode == "masked":
        return image * lungs
    if mode == "lungs_blacked_out":
        return image * (1 - lungs)
    raise ValueError(f"view mode must be one of {VIEW_MODES}, got {mode!r}")


class DiagnosisDataset(Dataset):
    """Stored lung views (uint8) with labels; augmentation, view mode and normalization per item.

    Args:
        images: (N, S, S) uint8 lung views; lungs: (N, S, S) bool masks of the views.
        labels: (N,) class indices.
        mode: the view mode applied after augmentation.
        transform: paired (image, mask) transform, e.g. :func:`diagnosis_augment`.
    """

    def __init__(self, images: np.ndarray, lungs: np.ndarray, labels: np.ndarray, mode: str = "crop", transform=None) -> None:
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
        return {"image": normalize(apply_view(image, lungs, self.mode)), "label": int(self.labels[i])}


__all__ = ["CLASSES", "LUNG_INPUTS", "VIEW_MODES", "DiagnosisDataset", "apply_view", "classification_samples", "lung_box", "lung_input", "lung_view"]
