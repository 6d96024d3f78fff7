"""The severity data: settings, the image tables of the protocol and the lesion masks in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from tqdm.auto import tqdm

from ...data import load_records
from ...data.classification import classification_samples
from ...data.severity import LESIONS, brixia_scores, expert_scores, lesion_samples, read_lesions
from ...data.splits import fold_of
from ...data.transforms import resize_mask
from ...io import read_image
from ...views import lungs_only, scale_lungs_only


@dataclass
class SeverityConfig:
    """Severity training settings (configs/severity.yaml)."""

    data_root: str | None = None
    out_dir: str = "runs/severity"
    lung_weights: str | None = None  # lung model spec (default: shipped): the lesion model reads the lungs it outlines
    init: str | None = None  # "imagenet-file:PATH[@SHA256]": the lesion model's encoder starts from ImageNet
    folds: int = 4  # lesion decoder folds (out-of-fold lesion maps for evaluation)
    epochs: int = 40
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    negatives: int = 40  # lesion-free "No finding" training images added to each fold
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16)  # lesion U-Net decoder widths, coarse to fine
    threshold: float = 0.5
    image_groups: tuple[str, ...] = ("lesions", "intensity", "deep")
    image_brixia: bool = False  # extent/opacity also read the predicted Brixia global score (SeverityHead)
    zone_groups: tuple[str, ...] = ("lesions", "intensity", "zone", "deep")
    repeats: int = 50  # random patient-grouped 50/50 splits
    seed: int = 0
    amp: str = "bf16"
    device: str = "auto"
    threads: int = 0
    limit: int = 0  # >0: at most this many images per table (smoke tests)
    lesion_export_name: str = (
        ""  # "": unet_mobilenetv2_lesions-<run folder name> (configs/severity.yaml: the shipped name)
    )
    export_name: str = (
        ""  # the severity heads; "": severity_linear-<run folder name> (configs/severity.yaml: the shipped name)
    )
    quick: bool = False  # a smoke run (--quick): every file it writes says so; the exported names end in -quick

    #: ``--quick``: a few images per table, two folds of one epoch, small decoder, three splits.
    QUICK: ClassVar[dict] = {
        "limit": 8,
        "folds": 2,
        "epochs": 1,
        "negatives": 2,
        "repeats": 3,
        "decoder_channels": "[16,16,8,8,8]",
        "init": "",
    }


class LesionDataset(Dataset):
    """Lungs-only views and lesion masks at the lung model's input size, in memory; paired augmentation.

    Each image's lungs come from ``segmenter`` (the masks inference uses); the view is the image
    with everything outside them black (:func:`covidcxr.views.lungs_only`). After augmentation
    the moved lung mask blacks out the outside again, so brightness jitter cannot light it up.

    Items: ``image`` (1, S, S) scaled by :data:`covidcxr.views.LUNGS_ONLY`, ``target``
    (len(LESIONS), S, S) float 0/1.
    """

    def __init__(self, samples: list[dict], segmenter, transform=None, progress: bool = True) -> None:
        self.samples, self.size, self.transform = samples, tuple(segmenter.size), transform
        images, targets = [], []
        for s in tqdm(samples, desc="lungs and lesion masks", disable=not progress, leave=False):
            image = read_image(s["path"])
            lesions = (
                read_lesions(s, image.shape) if "lesion_masks" in s else np.zeros((len(LESIONS), *image.shape), bool)
            )
            view, lungs = lungs_only(image, segmenter.segment([image])[0], self.size)
            images.append(torch.from_numpy(view))
            masks = [resize_mask(torch.from_numpy(m.astype(np.uint8)), self.size) for m in lesions]
            targets.append(torch.stack([*masks, torch.from_numpy(lungs.astype(np.uint8))]))
        self.images = torch.stack(images) if images else torch.empty(0, 1, *self.size)
        self.targets = (
            torch.stack(targets) if targets else torch.empty(0, len(LESIONS) + 1, *self.size, dtype=torch.uint8)
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        image, target = tv_tensors.Image(self.images[i]), tv_tensors.Mask(self.targets[i])
        if self.transform is not None:
            image, target = self.transform(image, target)
        image, target = image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor).float()
        lungs = target[-1:]
        return {"image": scale_lungs_only(image.clamp(0, 1) * lungs), "target": target[:-1]}


def severity_samples(cfg: SeverityConfig) -> dict[str, list[dict]]:
    """Images of each table: ``experts``, ``brixia``, ``lesions``, ``negatives`` (lesion-free training images), ``test_normals``."""
    records = load_records(cfg.data_root)
    sets = {
        "experts": expert_scores(records, cfg.data_root),
        "brixia": brixia_scores(records, cfg.data_root),
        "lesions": lesion_samples(records, cfg.data_root),
    }
    if cfg.limit:
        sets = {k: v[: cfg.limit] for k, v in sets.items()}
    marked = {s["filename"] for s in sets["lesions"]}
    normals, _ = classification_samples([r for r in records if r["dataset"] != "kermany-pediatric"], "train")
    normals = sorted(
        (s for s in normals if s["label_name"] == "No finding" and s["filename"] not in marked),
        key=lambda s: fold_of(s["dataset"] + s["filename"], 1_000_003),
    )
    sets["negatives"] = normals[: cfg.negatives]
    test_normals, _ = classification_samples(records, "test")
    sets["test_normals"] = [s for s in test_normals if s["label_name"] == "No finding"][
        : (cfg.limit if cfg.quick else max(cfg.limit, 90)) if cfg.limit else None
    ]
    return sets
