"""Lung-segmentation samples: (image, manual mask) pairs at the model's input size."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from tqdm.auto import tqdm

from ..io import normalize, read_image
from ..io.enhance import check_enhancement, enhance
from .masks import MASK_SOURCES, read_mask
from .transforms import resize_image, resize_mask

log = logging.getLogger(__name__)

MANUAL_SOURCES = tuple(s for s, kind in MASK_SOURCES.items() if kind == "manual")


def segmentation_samples(
    records: list[dict], split: str | None, sources: tuple[str, ...] = MANUAL_SOURCES
) -> list[dict]:
    """One sample per (record, mask source): an image annotated twice gives two samples.

    Returns:
        dicts with ``path, mask_path, mask_source, patient_id, dataset, split``.
    """
    out = []
    for rec in records:
        if split is not None and rec["split"] != split:
            continue
        for source in sources:
            if source in rec["masks"]:
                out.append(
                    {
                        "path": rec["path"],
                        "mask_path": rec["masks"][source],
                        "mask_source": source,
                        "patient_id": rec["patient_id"],
                        "dataset": rec["dataset"],
                        "split": rec["split"],
                    }
                )
    return out


def load_pair(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32 [0, 1]) and mask (uint8 0/1/2) of a sample at the image's own size."""
    image = read_image(sample["path"])
    mask = read_mask(sample["mask_path"], sample["mask_source"])
    if mask.shape != image.shape:
        raise ValueError(
            f"{sample['mask_path']}: mask {mask.shape} does not match image {image.shape} of {sample['path']}"
        )
    return image, mask


class SegmentationDataset(Dataset):
    """Images and masks resized once to ``size`` and kept in memory; augmentation per item.

    Each image is enhanced (``enhancement``, see :mod:`covidcxr.io.enhance`) at its own size
    before the resize, as :meth:`covidcxr.infer.LungSegmenter.preprocess` does at inference.

    Items are dicts: ``image`` (1, H, W) float normalized, ``mask`` (H, W) int64 0/1/2,
    ``mask_source``, ``patient_id``, ``path``.
    """

    def __init__(
        self,
        samples: list[dict],
        size: tuple[int, int],
        transform=None,
        progress: bool = True,
        enhancement: str = "none",
    ) -> None:
        self.samples = samples
        self.size = tuple(size)
        self.transform = transform
        self.enhancement = check_enhancement(enhancement)
        images, masks = [], []
        for s in tqdm(samples, desc="loading images", disable=not progress, leave=False):
            image, mask = load_pair(s)
            images.append(resize_image(torch.from_numpy(enhance(image, enhancement)), self.size))
            masks.append(resize_mask(torch.from_numpy(mask), self.size))
        self.images = torch.stack(images) if images else torch.empty(0, 1, *self.size)
        self.masks = torch.stack(masks) if masks else torch.empty(0, *self.size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        image = tv_tensors.Image(self.images[i])
        mask = tv_tensors.Mask(self.masks[i].long())
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        s = self.samples[i]
        return {
            "image": normalize(image.as_subclass(torch.Tensor)),
            "mask": mask.as_subclass(torch.Tensor),
            "mask_source": s["mask_source"],
            "patient_id": s["patient_id"],
            "path": s["path"],
        }
