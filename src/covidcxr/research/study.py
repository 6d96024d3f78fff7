"""The comparison study: backbone x lung input x enhancement, cross-validated by patient.

Every cell of the grid (5 backbones x 3 inputs x 3 enhancements = 45 by default) trains the
diagnosis classifier from random weights with the same budget (``epochs`` x ``draws_per_epoch``
images, no early stopping, so no cell picks its epoch on the images it is scored on) in each
of ``folds`` patient-level folds of the train+val pool (the test split is never touched),
for each seed of a fixed seed set. The held-out fold's images give, pooled over folds:

- macro AUROC (one-vs-rest, averaged over the three classes),
- COVID-19 vs other pneumonia AUROC inside covid-chestxray (one source: no source shortcut),
- macro AUROC with the lungs blacked out (near 0.5 when the model reads the lungs),
- the share of Grad-CAM saliency inside the lungs (``saliency_images`` per fold),

each with a bootstrap 95% CI (class-stratified for the AUROCs), and per cell the training
time (wall-clock and CPU minutes per fold, CI over folds), the model size (float16 weights, exact) and the stage-2
latency of one image (lung view + enhancement + classifier, median of ``latency_repeats``).

Resumable: a fold's results are one ``.npz`` in ``<out>/cells/<cell>/``; a rerun skips the
folds that exist and rebuilds ``results.csv``, ``results.md`` and the plots from them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import load_records
from ..data.classification import CLASSES, DiagnosisDataset, classification_samples
from ..data.splits import fold_of
from ..data.transforms import diagnosis_augment
from ..engine.common import distributed
from ..engine.common.loop import Loop
from ..engine.common.runs import device as device_of
from ..engine.common.runs import epoch_seed
from ..engine.diagnosis.views import prepare_views, sample_weights
from ..io import NORMALIZATION
from ..io.enhance import ENHANCEMENTS
from ..models import WeightSpec, eval_mode
from ..views import LUNG_INPUTS
from .cnn_model import DiagTrainConfig, build_model, macro_auroc, predict_logits, train_epoch
from .study_report import summarise, write_results

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v2")
INPUTS = ("whole", "crop", "masked")


@dataclass
class StudyConfig:
    """Study settings (configs/study.yaml; ``--quick`` applies :data:`QUICK`)."""

    data_root: str | None = None
    out_dir: str = "study"
    backbones: tuple[str, ...] = BACKBONES
    inputs: tuple[str, ...] = INPUTS
    enhancements: tuple[str, ...] = ENHANCEMENTS
    folds: int = 3
    seeds: tuple[int, ...] = (0,)
    input_size: int = 128
    margin: float = 0.1
    epochs: int = 6
    draws_per_epoch: int = 768  # images drawn (class- and source-balanced) per epoch
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    sampling: str = "group"
    amp: str = "bf16"
    saliency_images: int = 64  # held-out images per fold given a Grad-CAM
    latency_repeats: int = 30
    per_group: int = 0  # >0: at most this many images per (source, class) (quick runs)
    n_resamples: int = 1000
    threads: int = 0
    device: str = "auto"


#: ``covidcxr study --quick``: every cell of the grid, on a few images at a small size, in minutes.
QUICK = {
    "folds": 2,
    "input_size": 64,
    "epochs": 1,
    "draws_per_epoch": 64,
    "batch_size": 16,
    "saliency_images": 8,
    "latency_repeats": 5,
    "per_group": 12,
    "n_resamples": 200,
}


def cells(cfg: StudyConfig) -> list[tuple[str, str, str]]:
    """The grid's (backbone, input, enhancement) cells, in run order."""
    for name, values, known in (
        ("backbone", cfg.backbones, BACKBONES),
        ("input", cfg.inputs, LUNG_INPUTS),
        ("enhancement", cfg.enhancements, ENHANCEMENTS),
    ):
        unknown = sorted(set(values) - set(known))
        if unknown or not values:
            raise ValueError(f"study {name}s must be a non-empty subset of {known}, got {list(values)}")
    if cfg.folds < 2 or cfg.epochs < 1 or cfg.draws_per_epoch < cfg.batch_size or not cfg.seeds:
        raise ValueError(
            f"the study needs folds >= 2, epochs >= 1, draws_per_epoch >= batch_size and a seed; got folds {cfg.folds}, "
            f"epochs {cfg.epochs}, draws_per_epoch {cfg.draws_per_epoch}, batch_size {cfg.batch_size}, seeds {list(cfg.seeds)}"
        )
    return [(b, i, e) for e in cfg.enhancements for i in cfg.inputs for b in cfg.backbones]


def cell_name(cell: tuple[str, str, str]) -> str:
    return "-".join(cell)


def study_samples(cfg: StudyConfig) -> list[dict]:
    """Labelled frontal images of the train and val splits (the test split stays unseen)."""
    samples, _ = classification_samples(load_records(cfg.data_root))
    samples = [s for s in samples if s["split"] != "test"]
    if cfg.per_group:
        seen: dict[tuple, int] = {}
        kept = []
        for s in samples:
            key = (s["dataset"], s["label"])
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= cfg.per_group:
                kept.append(s)
        samples = kept
    if len({s["label"] for s in samples}) < len(CLASSES):
        raise ValueError("the study needs images of all three classes; check --data-root")
    return samples


# ---------------------------------------------------------------------------
# One fold of one cell


def _fold_config(cfg: StudyConfig, backbone: str, lung_input: str, seed: int) -> DiagTrainConfig:
    return DiagTrainConfig(
        model=backbone,
        init=None,
        lung_input=lung_input,
        margin=cfg.margin,
        input_size=cfg.input_size,
        sampling=cfg.sampling,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=seed,
        amp=cfg.amp,
    )


def train_fold(
    dcfg: DiagTrainConfig, views: dict, idx: np.ndarray, draws_per_epoch: int, device: torch.device
) -> torch.nn.Module:
    """A classifier trained from random weights on ``views[idx]`` for a fixed budget (no early stopping)."""
    torch.manual_seed(dcfg.seed)
    model = build_model(dcfg).to(device, memory_format=torch.channels_last)
    ds = DiagnosisDataset(
        views["images"][idx], views["lungs"][idx], views["labels"][idx], dcfg.lung_input, transform=diagnosis_augment()
    )
    weights = sample_weights(views["labels"][idx], [views["samples"][i]["dataset"] for i in idx], dcfg.sampling)
    steps = max(1, draws_per_epoch // dcfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=dcfg.lr, weight_decay=dcfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=dcfg.lr, total_steps=dcfg.epochs * steps, pct_start=0.1
    )

    def step(epoch: int) -> dict:
        seed = epoch_seed(dcfg.seed, epoch)
        torch.manual_seed(seed + 1)
        draws = distributed.weighted_shard(weights, steps * dcfg.batch_size, seed, rank=0, world_size=1)
        loader = DataLoader(ds, batch_size=dcfg.batch_size, sampler=draws, drop_last=True)
        return train_epoch(model, loader, optimizer, scheduler, dcfg, epoch, device)

    Loop(None, model, optimizer, scheduler, dcfg.epochs, device, desc="fold", leave=False, lr=False).run_epochs(step)
    return model.cpu()


def score_fold(
    model: torch.nn.Module, dcfg: DiagTrainConfig, views: dict, idx: np.ndarray, saliency_images: int
) -> dict:
    """Held-out outputs: probabilities intact and with the lungs blacked out; Grad-CAM lung shares."""
    from ..saliency import GradCam
    from ..views import lung_share

    def probs(mode: str) -> np.ndarray:
        ds = DiagnosisDataset(views["images"][idx], views["lungs"][idx], views["labels"][idx], mode)
        return torch.softmax(torch.from_numpy(predict_logits(model, ds, amp=dcfg.amp)), 1).numpy()

    intact = probs(dcfg.lung_input)
    pick = np.sort(np.random.default_rng(dcfg.seed).permutation(len(idx))[:saliency_images])
    ds = DiagnosisDataset(
        views["images"][idx[pick]], views["lungs"][idx[pick]], views["labels"][idx[pick]], dcfg.lung_input
    )
    cam = GradCam(model, dcfg.model)
    shares = []
    for start, batch in zip(range(0, len(pick), 16), DataLoader(ds, batch_size=16)):
        maps = cam(batch["image"], intact[pick[start : start + len(batch["image"])]].argmax(1).tolist())
        shares.extend(lung_share(m, views["lungs"][idx[pick[start + j]]]) for j, m in enumerate(maps))
    return {
        "probs": intact,
        "probs_blacked": probs("lungs_blacked_out"),
        "saliency_idx": pick,
        "saliency_share": np.array(shares, float),
    }


def stage2_latency(
    model: torch.nn.Module, dcfg: DiagTrainConfig, enhancement: str, image: np.ndarray, mask: np.ndarray, repeats: int
) -> np.ndarray:
    """Seconds per image of stage 2 as ``predict`` runs it (lung view, enhancement, classifier), ``repeats`` times."""
    from ..infer import TorchRunner, diagnoser_for

    spec = WeightSpec(
        name="study",
        architecture=dcfg.model,
        task="diagnosis",
        targets=list(CLASSES),
        input_size=(dcfg.input_size, dcfg.input_size),
        normalization=NORMALIZATION,
        file="",
        resize="lung-box",
        lung_input=dcfg.lung_input,
        margin=dcfg.margin,
        enhancement=enhancement,
    )
    diagnoser = diagnoser_for(TorchRunner(model, spec))
    times = []
    with eval_mode(model):
        for i in range(repeats + 2):
            t = time.perf_counter()
            diagnoser.predict([image], [mask])
            if i >= 2:  # two warm-up runs
                times.append(time.perf_counter() - t)
    return np.array(times)


def model_megabytes(model: torch.nn.Module) -> float:
    """Size of the weights stored as float16 (as shipped), in MB."""
    return (
        sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values()) / 1e6
    )


# ---------------------------------------------------------------------------
# The grid


def run_study(cfg: StudyConfig, progress: bool = True) -> dict:
    """Run (or resume) every cell and fold, then summarise; returns the summary."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    grid = cells(cfg)
    out = Path(cfg.out_dir)
    _check_resume(cfg, out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    samples = study_samples(cfg)
    todo = [
        (c, s, k) for c in grid for s in cfg.seeds for k in range(cfg.folds) if not _fold_path(out, c, s, k).is_file()
    ]
    log.info(
        "study: %d cells x %d seeds x %d folds on %d images; %d folds to run",
        len(grid),
        len(cfg.seeds),
        cfg.folds,
        len(samples),
        len(todo),
    )
    if todo:
        _run_folds(cfg, out, todo, samples, progress)
    summary = summarise(cfg, out, grid)
    write_results(summary, out)
    return summary


#: Settings a resumed study may change: where things are, how fast, and which cells to run.
_FREE = {"data_root", "out_dir", "threads", "device", "backbones", "inputs", "enhancements", "seeds", "n_resamples"}


def _check_resume(cfg: StudyConfig, out: Path) -> None:
    """Refuse to mix folds trained with other settings into one study folder."""
    saved = out / "config.json"
    if not saved.is_file():
        return
    old = json.loads(saved.read_text())
    new = json.loads(json.dumps(asdict(cfg)))
    changed = sorted(k for k in new if k not in _FREE and old.get(k) != new[k])
    if changed:
        raise ValueError(
            f"{out} holds a study run with other settings ({', '.join(f'{k}: {old.get(k)} -> {new[k]}' for k in changed)}); choose another --out or the same settings"
        )


def _fold_path(out: Path, cell: tuple[str, str, str], seed: int, fold: int) -> Path:
    return out / "cells" / cell_name(cell) / f"seed{seed}-fold{fold}.npz"


def _run_folds(cfg: StudyConfig, out: Path, todo: list, samples: list[dict], progress: bool) -> None:
    from ..infer import LungSegmenter

    device = device_of(cfg.device)
    segmenter = LungSegmenter.from_spec()
    views_by_key: dict[tuple[bool, str], dict] = {}
    latency_image = _latency_case(segmenter)
    for cell, seed, k in tqdm(todo, desc="study", unit="fold", disable=not progress):
        backbone, lung_input, enhancement = cell
        key = (lung_input == "whole", enhancement)
        if key not in views_by_key:  # crop and masked share the stored views
            views_by_key[key] = prepare_views(
                samples, segmenter, cfg.input_size, cfg.margin, whole=key[0], enhancement=enhancement, progress=progress
            )
        views = views_by_key[key]
        names = [f"{s['dataset']}/{s['filename']}" for s in views["samples"]]
        folds = np.array(
            [fold_of(f"{s['dataset']}:{s['patient_id']}", cfg.folds) for s in views["samples"]]
        )  # by patient
        train_idx, test_idx = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        dcfg = _fold_config(cfg, backbone, lung_input, seed)
        t0, c0 = time.perf_counter(), time.process_time()
        model = train_fold(dcfg, views, train_idx, cfg.draws_per_epoch, device)
        train_s, train_cpu_s = (
            time.perf_counter() - t0,
            time.process_time() - c0,
        )  # CPU time: immune to pauses and other processes
        scores = score_fold(model, dcfg, views, test_idx, cfg.saliency_images)
        latency = (
            stage2_latency(model, dcfg, enhancement, *latency_image, cfg.latency_repeats) if k == 0 else np.zeros(0)
        )
        path = _fold_path(out, cell, seed, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            names=np.array(names)[test_idx],
            labels=views["labels"][test_idx],
            sources=np.array([views["samples"][i]["dataset"] for i in test_idx]),
            train_s=train_s,
            train_cpu_s=train_cpu_s,
            size_mb=model_megabytes(model),
            latency_s=latency,
            train_images=len(train_idx),
            **scores,
        )
        tmp.replace(path)
        log.info(
            "%s seed %d fold %d: macro AUROC %.3f, %.0f s",
            cell_name(cell),
            seed,
            k,
            macro_auroc(views["labels"][test_idx], scores["probs"]),
            train_s,
        )


def _latency_case(segmenter) -> tuple[np.ndarray, np.ndarray]:
    """One full-size X-ray and its lung mask, for the latency of stage 2."""
    from ..io import read_image

    image = read_image(Path(__file__).parents[1] / "samples" / "sample_cxr.jpg")
    return image, segmenter.segment([image])[0]
