"""The lesion model: its loss, training on lungs-only views, out-of-fold lesion maps and their scores.

The lesion model is a U-Net with its own MobileNetV2 encoder (started from the ImageNet file
when the config names one). It reads the image with everything outside the lung outline
black (:func:`covidcxr.views.lungs_only`), so no pixel outside the lungs can change a lesion
map or the encoder features the severity head pools.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ...data.severity import LESIONS, read_lesions
from ...data.splits import fold_of
from ...data.transforms import segmentation_augment, upsample_logits
from ...infer import LungSegmenter
from ...infer.zones import severity_features
from ...io import read_image
from ...models import create_model, eval_mode
from ...models.graphs import UnetGraph
from ...views import lungs_only, scale_lungs_only
from ..common.loop import Loop
from ..common.runs import autocast, epoch_seed
from ..common.runs import device as device_of
from .data import LesionDataset, SeverityConfig

log = logging.getLogger(__name__)


def lesion_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice per lesion class over the whole batch (many images lack a class)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(0, 2, 3))
    dice = (2 * inter + 1) / (p.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + 1)
    return bce + (1 - dice).mean()


def new_lesion_model(cfg: SeverityConfig, init: bool = False) -> torch.nn.Module:
    """A lesion U-Net of the configured decoder widths; with ``init`` and ``cfg.init``, its encoder from ImageNet."""
    model = create_model("unet_mobilenetv2", num_classes=len(LESIONS), decoder_channels=tuple(cfg.decoder_channels))
    if init and cfg.init:
        from ...models.pretrained import load_imagenet, parse_init

        parsed = parse_init(cfg.init)
        if parsed is None:
            raise ValueError(f"severity init must be 'imagenet-file:PATH[@SHA256]', got {cfg.init!r}")
        load_imagenet(model, *parsed)
    return model


def train_lesion_model(
    cfg: SeverityConfig, segmenter: LungSegmenter, samples: list[dict], run: Path, progress: bool = True
) -> torch.nn.Module:
    """Train a lesion U-Net on lungs-only views (lungs from ``segmenter``); resumes from ``run/checkpoint.pt``."""
    run.mkdir(parents=True, exist_ok=True)
    device = device_of(cfg.device)
    torch.manual_seed(cfg.seed)
    decoder = new_lesion_model(cfg, init=True).to(device, memory_format=torch.channels_last)
    ds = LesionDataset(samples, segmenter, transform=segmentation_augment(), progress=progress)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(ds) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    loop = Loop(
        run,
        decoder,
        optimizer,
        scheduler,
        cfg.epochs,
        device,
        desc=f"lesions {run.name}",
        leave=False,
        progress=progress,
        lr=False,
    ).load()

    def step(epoch: int) -> dict:
        g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        decoder.train()
        total, n = 0.0, 0
        for batch in DataLoader(
            ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size, generator=g
        ):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            with autocast(cfg.amp, device):
                logits = decoder(x)
            loss = lesion_loss(logits, batch["target"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, n = total + loss.item() * len(x), n + len(x)
        return {"train_loss": total / max(n, 1)}

    loop.run_epochs(step)
    (run / "history.json").write_text(json.dumps(loop.history, indent=2))
    return decoder.cpu().eval()


@torch.inference_mode()
def lesion_outputs(
    segmenter: LungSegmenter,
    decoders: dict[int, torch.nn.Module],
    samples: list[dict],
    fold_of_sample,
    threshold: float = 0.5,
    progress: bool = True,
) -> dict:
    """Lung masks, lesion maps and severity features of ``samples``, each with its fold's lesion model.

    Returns:
        dict ``filename`` -> ``image_features`` (D,), ``zone_features`` (6, Dz),
        ``lesions`` (len(LESIONS), H, W) bool inside the lungs, ``lungs`` (H, W) bool.
    """
    out = {}
    for s in tqdm(samples, desc="severity features", disable=not progress, leave=False):
        image = read_image(s["path"])
        mask = segmenter.segment([image])[0]
        view, lungs = lungs_only(image, mask, segmenter.size)
        x = torch.from_numpy(scale_lungs_only(view))[None]
        model = decoders[fold_of_sample(s)]
        with eval_mode(model), torch.inference_mode():
            logits, *feats = UnetGraph(model)(x)
        p = torch.sigmoid(logits.float())
        encoder = [x.numpy(), *(f.float().numpy() for f in feats)]
        image_f, zone_f = severity_features(x.numpy(), encoder, lungs[None], p.numpy(), threshold)
        lesions = (upsample_logits(p, mask.shape)[0].numpy() > threshold) & mask
        out[s["filename"]] = {
            "image_features": image_f[0],
            "zone_features": zone_f[0],
            "lesions": lesions,
            "lungs": mask,
        }
    return out


def lesion_metrics(samples: list[dict], outputs: dict, min_share: float = 0.01, seed: int = 0) -> dict:
    """Per lesion class: Dice (images the radiologists marked) with a bootstrap CI, and disagreement rates.

    ``min_share``: a model "finds" a lesion class when it covers at least this share of the lungs.
    Returns per class ``dice`` {value, ci_low, ci_high, n}, ``model_only`` (share of images
    without a radiologist's mark where the model finds that lesion) and ``radiologist_only``
    (share of marked images where the model finds none).
    """
    from ...metrics import bootstrap_ci, dice

    out = {}
    for k, name in enumerate(LESIONS):
        dices, model_only, rad_only = [], [], []
        for s in samples:
            o = outputs[s["filename"]]
            truth = read_lesions(s, o["lungs"].shape)[k]
            pred = o["lesions"][k]
            found = pred.sum() >= min_share * max(o["lungs"].sum(), 1)
            if truth.any():
                dices.append(dice(pred, truth))
                rad_only.append(not found)
            else:
                model_only.append(bool(found))
        out[name] = {
            "dice": {**bootstrap_ci(np.array(dices), seed=seed), "n": len(dices)} if dices else None,
            "model_only": {"rate": float(np.mean(model_only)) if model_only else float("nan"), "n": len(model_only)},
            "radiologist_only": {"rate": float(np.mean(rad_only)) if rad_only else float("nan"), "n": len(rad_only)},
        }
    return out


def fold_decoders(
    cfg: SeverityConfig, segmenter: LungSegmenter, sets: dict, run: Path, progress: bool
) -> dict[int, torch.nn.Module]:
    """One lesion decoder per patient fold, each trained without its fold's patients (in ``run/fold<k>``)."""
    decoders = {}
    for k in range(cfg.folds):
        train = [s for s in sets["lesions"] if fold_of(s["patient_id"], cfg.folds) != k] + sets["negatives"]
        log.info("lesion fold %d/%d: %d training images", k + 1, cfg.folds, len(train))
        decoders[k] = train_lesion_model(cfg, segmenter, train, run / f"fold{k}", progress)
    return decoders


def final_or_fold(cfg: SeverityConfig, run: Path, decoders: dict) -> torch.nn.Module:
    """The lesion model trained on every annotated image when it exists, else fold 0's."""
    final = run / "final" / "checkpoint.pt"
    if final.is_file():
        model = new_lesion_model(cfg)
        model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True)["model"])
        return model.eval()
    return decoders[0]
