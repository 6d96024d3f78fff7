"""The diagnosis classifier's parts: its settings, the model and its start, one training epoch, outputs, temperature."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.classification import CLASSES, DiagnosisDataset
from ..engine.common import distributed
from ..engine.common.losses import outside_lungs_share
from ..engine.common.runs import autocast
from ..models import WeightSpec, create_model, eval_mode
from ..models.classifier import CAM_LAYERS
from ..models.pretrained import load_imagenet, parse_init

log = logging.getLogger(__name__)


@dataclass
class DiagTrainConfig:
    """Diagnosis training settings (configs/diagnosis.yaml)."""

    data_root: str | None = None
    out_dir: str = "runs/diagnosis"
    model: str = "mobilenet_v2"
    pretrained: str | None = None  # "imagenet" needs internet once
    init: str | None = (
        "lungs"  # start from: "lungs" (the stage-1 encoder), "imagenet-file:PATH[@SHA256]", a .pt state_dict or a weights spec; None: random
    )
    lung_input: str = "crop"  # crop | masked
    margin: float = 0.1  # lung box grown by this fraction per side
    input_size: int = 224
    enhancement: str = "none"  # none | clahe | dehaze, on each lung view (covidcxr.io.enhance); recorded in the spec
    sampling: str = "class_source"  # class_source | group | class | none
    epochs: int = 30
    patience: int = 6  # stop after this many epochs without a better validation macro AUROC
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    lung_attention: float = (
        0.0  # >0: weight of the penalty on class activation outside the lungs (losses.outside_lungs_share)
    )
    folds: int = 0  # >1: K-fold cross-validation over train+val patients (no export)
    seed: int = 0
    amp: str = "bf16"
    device: str = "auto"
    workers: int = 0
    threads: int = 0
    limit: int = 0  # >0: at most this many train and val samples (smoke tests)
    lung_weights: str | None = None  # stage-1 spec; None = shipped
    export_name: str = ""  # "": <model>-<run folder name> (configs/diagnosis_cnn.yaml: mobilenet_v2_diagnosis)
    quick: bool = False  # a smoke run (--quick): every file it writes says so; the exported name ends in -quick

    #: ``--quick``: a few dozen images at 64 px, one epoch (docs/training.md).
    QUICK: ClassVar[dict] = {"limit": 24, "input_size": 64, "epochs": 1, "batch_size": 8}


def build_model(cfg: DiagTrainConfig) -> torch.nn.Module:
    model = create_model(cfg.model, in_chans=1, num_classes=len(CLASSES), pretrained=cfg.pretrained)
    if cfg.init and (imagenet := parse_init(cfg.init)):
        load_imagenet(model, *imagenet)
    elif cfg.init:
        loaded = load_matching(model, _init_state(cfg.init))
        if not loaded:
            raise ValueError(f"{cfg.init}: no parameter matches {cfg.model}'s names and shapes")
        log.info("initialised %d of %d tensors of %s from %s", loaded, len(model.state_dict()), cfg.model, cfg.init)
    return model


def load_matching(model: torch.nn.Module, state: dict) -> int:
    """Load the tensors of ``state`` that fit ``model``; returns how many were loaded.

    Tensors are matched by name; when no name matches and ``state`` holds a U-Net encoder
    (keys with ``encoder.``), the encoder is matched to the classifier's feature extractor
    in order, every pair of shapes checked. The stage-1 MobileNetV2 encoder and the
    ``mobilenet_v2`` classifier line up this way, tensor for tensor.
    """
    own = model.state_dict()
    by_name = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not by_name:
        encoder = [v for k, v in state.items() if k.startswith("encoder.") or ".encoder." in k]
        head = {f"{_head_name(model)}.{k}" for k in model.get_classifier().state_dict()}
        body = [k for k in own if k not in head]
        if encoder and len(encoder) == len(body) and all(own[k].shape == v.shape for k, v in zip(body, encoder)):
            by_name = dict(zip(body, encoder))
    model.load_state_dict(by_name, strict=False)
    return len(by_name)


def _head_name(model: torch.nn.Module) -> str:
    """Name of the classifier module (``fc``, ``classifier``…)."""
    head = model.get_classifier()
    return next(n for n, m in model.named_modules() if m is head)


def _init_state(path: str) -> dict:
    """A state_dict from a ``.pt`` file, the file a weights spec (``.json``) names, or ``lungs`` (the shipped stage-1 model)."""
    if path == "lungs":
        from ..models.weights import shipped_spec_path

        path = str(shipped_spec_path("lungs"))
    p = Path(path)
    if p.suffix == ".json":
        p = p.parent / WeightSpec.from_json(p).file
    state = torch.load(p, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def train_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    cfg: DiagTrainConfig,
    epoch: int,
    device: torch.device,
    net: torch.nn.Module | None = None,
) -> dict:
    """One pass over ``loader``.

    With ``cfg.lung_attention`` the loss adds that weight times the share of class activation
    outside the lungs (the last feature map of ``net``, the plain module under a DDP wrapper;
    default ``model``, read by a hook).

    Returns:
        dict with ``train_loss`` (mean over all processes under torchrun) and, with lung
        attention, ``train_outside_lungs`` (the mean share outside the lungs).
    """
    net = model if net is None else net
    model.train()
    features: list[torch.Tensor] = []
    hook = (
        net.get_submodule(CAM_LAYERS[cfg.model]).register_forward_hook(lambda m, i, o: features.append(o))
        if cfg.lung_attention
        else None
    )
    total, outside_sum, n = 0.0, 0.0, 0
    try:
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not distributed.is_main()):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            features.clear()
            with autocast(cfg.amp, device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), batch["label"].to(device), label_smoothing=cfg.label_smoothing)
            if hook is not None:
                outside = outside_lungs_share(features[-1], net.get_classifier().weight, batch["lungs"].to(device))
                loss = loss + cfg.lung_attention * outside
                outside_sum += outside.item() * len(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, n = total + loss.item() * len(x), n + len(x)
    finally:
        if hook is not None:
            hook.remove()
    total, outside_sum, n = distributed.all_reduce_sum([total, outside_sum, n], device)
    stats = {"train_loss": total / max(n, 1)}
    if hook is not None:
        stats["train_outside_lungs"] = outside_sum / max(n, 1)
    return stats


def validate(model, val_ds: DiagnosisDataset, labels: np.ndarray, cfg: DiagTrainConfig, device: torch.device) -> dict:
    """Validation loss and macro AUROC of ``model`` (the plain module, not its DDP wrapper)."""
    logits = torch.from_numpy(predict_logits(model, val_ds, amp=cfg.amp, device=device))
    val_loss = float(F.cross_entropy(logits, torch.from_numpy(labels)))
    return {"val_loss": val_loss, "val_auroc": macro_auroc(labels, torch.softmax(logits, 1).numpy())}


# ---------------------------------------------------------------------------
# Model outputs


@torch.inference_mode()
def predict_logits(
    model,
    dataset,
    batch_size: int = 64,
    amp: str = "bf16",
    device: torch.device | None = None,
    features: bool = False,
):
    """Logits (N, K) float32 of a dataset, and with ``features`` the pooled features (N, D)."""
    device = device or torch.device("cpu")
    logits, feats = [], []
    with eval_mode(model):
        for batch in DataLoader(dataset, batch_size=batch_size):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            with autocast(amp, device):
                f = model.forward_head(model.forward_features(x), pre_logits=True)
                lg = model.get_classifier()(f)
            logits.append(lg.float().cpu())
            feats.append(f.float().cpu())
    out = torch.cat(logits).numpy() if logits else np.zeros((0, 0), np.float32)
    if features:
        return out, (torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32))
    return out


#: The range a fitted temperature is clipped to.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def temperature_at_bound(temperature: float, rel: float = 0.01) -> bool:
    """Whether a fitted temperature ended within ``rel`` (1%) of a bound of :data:`TEMPERATURE_BOUNDS`."""
    return any(abs(temperature - b) <= rel * b for b in TEMPERATURE_BOUNDS)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` (LBFGS on log T), clipped to :data:`TEMPERATURE_BOUNDS`.

    Logs a WARNING when T ends within 1% of a bound (the fit found no interior optimum:
    separable or degenerate validation logits, too few images); :func:`temperature_at_bound` says it.
    """
    lg = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lg / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    temperature = float(np.clip(log_t.exp().item(), *TEMPERATURE_BOUNDS))
    if temperature_at_bound(temperature):
        log.warning(
            "calibration temperature %.3g sits at its bound %s (fitted on %d validation images): the probabilities "
            "are not calibrated; use more validation images",
            temperature,
            TEMPERATURE_BOUNDS,
            len(y),
        )
    return temperature


def macro_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over the classes present (NaN when fewer than two)."""
    present = [c for c in range(probs.shape[1]) if 0 < (labels == c).sum() < len(labels)]
    if len(present) < 2:
        return float("nan")
    return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))
