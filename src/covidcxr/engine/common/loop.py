"""The epoch loop every trainer runs: resume, history, best weights, checkpoint, metrics and learning curve.

A trainer builds its model, optimizer and scheduler, makes a :class:`Loop`, calls
:meth:`Loop.load` (continue from ``checkpoint.pt`` when resuming), wraps its model for DDP
if it wants to, and calls :meth:`Loop.run` with a per-epoch training step and, optionally,
a validation. The loop seeds nothing: each step seeds its own epoch (see
:func:`covidcxr.engine.common.runs.epoch_seed`), so a resumed run repeats every epoch exactly.

Under torchrun every process runs the loop; rank 0 validates (the others take its numbers,
so early stopping agrees everywhere), keeps the best weights and writes the files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ... import plots
from . import distributed
from .runs import checkpoint

log = logging.getLogger(__name__)


@dataclass
class Loop:
    """One training run's epochs.

    Attributes:
        run: folder of ``checkpoint.pt`` (and, with a ``metric``, ``metrics.json`` and
            ``learning_curve.png``); None: nothing is written and nothing resumed (a fixed-budget
            fit inside a larger experiment).
        model: the plain module (not its DDP wrapper): checkpointed and kept as the best state.
        optimizer, scheduler: checkpointed and restored with the model.
        epochs: epochs in all, the resumed ones included.
        device: where the checkpoint is loaded to.
        metric: history key of the validation number that picks the best epoch (higher is
            better), e.g. ``val_dice``; None: no validation, no best state, no metrics.json.
        best_key: its key in the ``best`` dict of the checkpoint (``dice``, ``auroc``).
        patience: stop after this many epochs without a better ``metric`` (None: never).
        config: saved in every checkpoint as ``config`` when given.
        extra: more objects with ``state_dict``/``load_state_dict`` kept in the checkpoint under their keys.
        check: called with a loaded checkpoint before anything is restored from it.
        desc, leave, progress: the epoch bar (shown on rank 0 only, and only with ``progress``).
        lr: record the scheduler's learning rate in the history.
    """

    run: Path | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epochs: int
    device: torch.device
    metric: str | None = None
    best_key: str | None = None
    patience: int | None = None
    config: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    check: Callable[[dict], None] | None = None
    desc: str = "training"
    leave: bool = True
    progress: bool = True
    lr: bool = True
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    start: int = 0
    stale: int = 0

    def __post_init__(self) -> None:
        self.run = Path(self.run) if self.run is not None else None
        if self.metric and not self.best:
            self.best = {self.best_key: -1.0, "epoch": -1, "state": None}

    @property
    def path(self) -> Path:
        return self.run / "checkpoint.pt"

    def load(self, resume: bool = True) -> Loop:
        """Continue from ``checkpoint.pt`` when ``resume`` and it exists; every rank checks it starts where rank 0 does."""
        if resume and self.run is not None and self.path.is_file():
            ckpt = torch.load(self.path, map_location=self.device, weights_only=True)
            if self.check is not None:
                self.check(ckpt)
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            for key, obj in self.extra.items():
                obj.load_state_dict(ckpt[key])
            self.history, self.start = ckpt["history"], ckpt["epoch"] + 1
            if self.metric:
                self.best = ckpt["best"]
            if self.patience is not None:
                self.stale = ckpt["stale"]
            log.info("resumed %s at epoch %d", self.run, self.start + 1)
        distributed.check_same(self.start, "resume epoch")
        return self

    def run_epochs(self, step: Callable[[int], dict], validate: Callable[[], dict] | None = None) -> Loop:
        """Train ``step(epoch)`` (a dict of training numbers, ``train_loss`` first) for the remaining epochs.

        ``validate()`` (rank 0 only) returns the validation numbers, ``metric`` among them.
        """
        main_rank = distributed.is_main()
        t0 = time.time() - (self.history[-1]["elapsed_s"] if self.history else 0.0)
        bar = tqdm(
            range(self.start, self.epochs),
            desc=self.desc,
            initial=self.start,
            total=self.epochs,
            disable=not (main_rank and self.progress),
            leave=self.leave,
        )
        for epoch in bar:
            if self.patience is not None and self.stale >= self.patience:
                break
            train = step(epoch)
            val = distributed.broadcast(validate() if main_rank else None) if validate is not None else {}
            entry = {"epoch": epoch + 1, **train, **val, "elapsed_s": time.time() - t0}
            if self.lr:
                entry["lr"] = self.scheduler.get_last_lr()[0]
            self.history.append(entry)
            self._keep_best(val, epoch, main_rank)
            postfix = {"loss": f"{train['train_loss']:.4f}"}
            if self.metric:
                postfix[self.metric] = f"{val[self.metric]:.4f}"
            bar.set_postfix(**postfix)
            if main_rank and self.run is not None:
                self._save(epoch)
        return self

    def _keep_best(self, val: dict, epoch: int, main_rank: bool) -> None:
        if not self.metric:
            return
        if val[self.metric] > self.best[self.best_key]:
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()} if main_rank else None
            self.best, self.stale = {self.best_key: val[self.metric], "epoch": epoch + 1, "state": state}, 0
        else:
            self.stale += 1

    def _save(self, epoch: int) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "history": self.history,
        }
        if self.metric:
            state["best"] = self.best
        if self.patience is not None:
            state["stale"] = self.stale
        if self.config is not None:
            state["config"] = self.config
        checkpoint(self.path, **state, **{k: v.state_dict() for k, v in self.extra.items()})
        if self.metric:
            summary = {
                "history": self.history,
                "best_epoch": self.best["epoch"],
                f"best_{self.metric}": self.best[self.best_key],
            }
            if (self.config or {}).get("quick"):
                summary["smoke"] = True  # a --quick run: its numbers say nothing about the recipe
            (self.run / "metrics.json").write_text(json.dumps(summary, indent=2))
            plots.learning_curve(self.history, self.run / "learning_curve.png", metric=self.metric)
