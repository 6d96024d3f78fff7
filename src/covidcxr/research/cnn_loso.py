"""Stage 2 as a fine-tuned CNN whose every objective is a within-source contrast, under LOSO.

The design (``cnn_within_source``, docs/experiments/stage2-source-blind.md): one MobileNetV2
(timm ``mobilenet_v2``, ImageNet start) on the masked lung view, with two logits:

- ``abnormal``: pneumonia (COVID-19 or other) vs no finding, learned only inside the archives
  that hold both classes (:data:`ABNORMAL_SOURCES`);
- ``covid``: COVID-19 vs other pneumonia, learned only inside :data:`COVID_SOURCES`.

Batches draw every (source, class) group of each objective equally often, so inside every
source each class is as frequent as the other: what makes an image look like its source
predicts neither class and carries no gradient. The three class probabilities are
``P(no finding) = 1 - a``, ``P(COVID-19) = a c``, ``P(other) = a (1 - c)``.

:func:`run_cnn_loso` trains one such model per fold (the sources left out never seen; a fold
that leaves out only sources no objective reads shares the model of another) and scores the
left-out sources as :mod:`covidcxr.engine.diagnosis.loso` does for the head designs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from ..data.classification import DiagnosisDataset
from ..data.transforms import diagnosis_augment
from ..engine.common.loop import Loop
from ..engine.common.runs import autocast
from ..engine.diagnosis.heads import ABNORMAL_SOURCES, COVID, COVID_SOURCES, NORMAL, factorised
from ..engine.diagnosis.loso import FOLDS, score_folds, write

log = logging.getLogger(__name__)

DESIGN = "cnn_within_source"


@dataclass
class CnnRecipe:
    """The one recipe every fold trains with (fixed before the first LOSO run)."""

    model: str = "mobilenet_v2"
    input_size: int = 224
    margin: float = 0.1
    epochs: int = 5
    draws_per_epoch: int = 2400  # images drawn per epoch (with replacement, groups balanced)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    amp: str = "bf16"

    #: ``--limit`` (a smoke run): 64 px, one short epoch.
    QUICK: ClassVar[dict] = {"input_size": 64, "epochs": 1, "draws_per_epoch": 64, "batch_size": 16}


def objective_groups(labels: np.ndarray, sources: np.ndarray, kept: set[str]) -> np.ndarray:
    """The (source, class) group index of each image for its objective, -1 where no objective reads it."""
    names: dict[tuple[str, str], int] = {}
    group = np.full(len(labels), -1)
    for i, (y, src) in enumerate(zip(labels, sources)):
        if src not in kept:
            continue
        if src in ABNORMAL_SOURCES:
            key = (src, "normal" if y == NORMAL else "abnormal")
        elif src in COVID_SOURCES and y != NORMAL:
            key = (src, "covid" if y == COVID else "other")
        else:
            continue
        group[i] = names.setdefault(key, len(names))
    return group


class _Indexed(Dataset):
    def __init__(self, base: Dataset, index: np.ndarray) -> None:
        self.base, self.index = base, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[int(self.index[i])], "row": int(self.index[i])}


def build_model(recipe: CnnRecipe, init: str | None) -> torch.nn.Module:
    """The two-logit MobileNetV2, its feature extractor started from the ImageNet file of ``init``."""
    from ..models import create_model
    from ..models.pretrained import load_imagenet, parse_init

    model = create_model(recipe.model, in_chans=1, num_classes=2)
    if init:
        load_imagenet(model, *parse_init(init))
    return model


def within_source_loss(logits: torch.Tensor, labels: torch.Tensor, sources: list[str]) -> torch.Tensor:
    """BCE of the ``abnormal`` logit on :data:`ABNORMAL_SOURCES` images plus BCE of ``covid`` on :data:`COVID_SOURCES` pneumonias."""
    abn = torch.tensor([s in ABNORMAL_SOURCES for s in sources])
    cov = torch.tensor([s in COVID_SOURCES for s in sources]) & (labels != NORMAL)
    loss = logits.new_zeros(())
    if abn.any():
        loss = loss + F.binary_cross_entropy_with_logits(logits[abn, 0], (labels[abn] != NORMAL).float())
    if cov.any():
        loss = loss + F.binary_cross_entropy_with_logits(logits[cov, 1], (labels[cov] == COVID).float())
    return loss


def train_fold(
    views: dict,
    sources: np.ndarray,
    splits: np.ndarray,
    kept: set[str],
    recipe: CnnRecipe,
    init: str | None,
    path: Path,
) -> torch.nn.Module:
    """Train on the train-split images of ``kept`` sources; resumes from ``path/checkpoint.pt`` (one per epoch)."""
    torch.manual_seed(recipe.seed)
    labels = views["labels"]
    group = objective_groups(labels, sources, kept)
    index = np.flatnonzero((group >= 0) & (splits == "train"))
    if not len(index):
        raise ValueError(f"no training image for the objectives in {sorted(kept)}")
    counts = np.bincount(group[index])
    weights = torch.as_tensor(1.0 / counts[group[index]], dtype=torch.double)
    base = DiagnosisDataset(views["images"], views["lungs"], labels, mode="masked", transform=diagnosis_augment())
    model = build_model(recipe, init).to(memory_format=torch.channels_last)
    steps = recipe.epochs * (recipe.draws_per_epoch // recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.15)
    device = torch.device("cpu")
    path.mkdir(parents=True, exist_ok=True)
    loop = Loop(path, model, opt, sched, recipe.epochs, device, desc=f"fold {path.name}", leave=False, lr=False).load()

    def step(epoch: int) -> dict:
        g = torch.Generator().manual_seed(recipe.seed * 1000 + epoch)
        sampler = WeightedRandomSampler(weights, recipe.draws_per_epoch, replacement=True, generator=g)
        loader = DataLoader(_Indexed(base, index), batch_size=recipe.batch_size, sampler=sampler, drop_last=True)
        model.train()
        total, n = 0.0, 0
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False):
            x = batch["image"].contiguous(memory_format=torch.channels_last)
            with autocast(recipe.amp, device):
                logits = model(x)
            loss = within_source_loss(logits.float(), batch["label"], [sources[r] for r in batch["row"].tolist()])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(x), n + len(x)
        return {"train_loss": total / max(n, 1)}

    loop.run_epochs(step)
    return model.eval()


@torch.inference_mode()
def class_probabilities(model: torch.nn.Module, views: dict, rows: np.ndarray, amp: str = "bf16") -> np.ndarray:
    """(len(rows), 3) probabilities (COVID-19, other pneumonia, no finding) from the two logits."""
    ds = DiagnosisDataset(views["images"][rows], views["lungs"][rows], views["labels"][rows], mode="masked")
    out = []
    model.eval()
    for batch in DataLoader(ds, batch_size=64):
        with autocast(amp, torch.device("cpu")):
            logits = model(batch["image"].contiguous(memory_format=torch.channels_last)).float()
        out.append(factorised(*torch.sigmoid(logits).numpy().T))
    return np.concatenate(out) if out else np.zeros((0, 3))


def run_cnn_loso(
    views: dict,
    out_dir: str | Path,
    recipe: CnnRecipe | None = None,
    init: str | None = None,
    n_resamples: int = 1000,
    extra: dict | None = None,
) -> dict:
    """Every fold of :data:`FOLDS`: train (or resume), score the sources left out, write loso.json/.md/.png (with ``extra``)."""
    recipe = recipe or CnnRecipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = views["samples"]
    sources = np.array([s["dataset"] for s in samples])
    splits = np.array([s["split"] for s in samples])
    labels = views["labels"]
    every = set(sources)
    readable = set(ABNORMAL_SOURCES) | set(COVID_SOURCES)
    (out / "recipe.json").write_text(json.dumps({**asdict(recipe), "init": init}, indent=2) + "\n")
    folds, trained = {}, {}
    for fold, left_out in FOLDS.items():
        kept = every - set(left_out)
        key = "+".join(sorted(kept & readable))
        if key not in trained:
            tag = "-".join(sorted(set(left_out) & readable)) or "none"
            t0 = time.perf_counter()
            trained[key] = train_fold(views, sources, splits, kept, recipe, init, out / f"model-without-{tag}")
            log.info("fold %s: model without %s ready (%.0f s)", fold, tag, time.perf_counter() - t0)
        held = np.flatnonzero(np.isin(sources, left_out))
        p = np.full((len(samples), 3), np.nan)
        p[held] = class_probabilities(trained[key], views, held, recipe.amp)
        folds[fold] = p
        np.save(out / f"probs-{fold.replace(' ', '_').replace('+', 'and')}.npy", p)
    results = {
        f"{DESIGN} / masked lungs": {
            "design": DESIGN,
            "features": "image",
            **score_folds(folds, labels, sources, n_resamples),
        }
    }
    write(results, out, {"n_images": len(samples), "recipe": asdict(recipe), "init": init, **(extra or {})})
    return results


def evaluate_cnn_loso(
    data_root: str | None = None,
    out_dir: str | Path = "eval/loso-cnn",
    recipe: CnnRecipe | None = None,
    init: str | None = None,
    limit: int = 0,
) -> dict:
    """:func:`run_cnn_loso` on the masked lung views of every labelled frontal image (shipped stage 1, cached views).

    ``init``: ``imagenet-file:PATH[@SHA256]`` (default: the file in ``../shared/pretrained`` beside
    the data); ``limit``: at most that many images per source, split and class (smoke runs).
    """
    from ..data import load_records
    from ..data.classification import classification_samples, first_per_group
    from ..engine.diagnosis.loso import default_imagenet_init
    from ..engine.diagnosis.views import prepare_views
    from ..infer import LungSegmenter

    recipe = recipe or CnnRecipe()
    samples, _ = classification_samples(load_records(data_root))
    samples = first_per_group(samples, limit, ("dataset", "split", "label"))
    views = prepare_views(samples, LungSegmenter.from_spec(), recipe.input_size, recipe.margin, cache=not limit)
    extra = {"smoke": True, "limit_per_source_split_class": limit} if limit else {}
    return run_cnn_loso(views, out_dir, recipe, init or default_imagenet_init(), extra=extra)
