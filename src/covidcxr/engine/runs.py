"""What every trainer shares: the device, bf16 autocast, atomic checkpoints, the run folder, epoch seeds."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from ..config import save_config
from . import distributed


def device(name: str) -> torch.device:
    """``auto`` (cuda when available), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(amp: str, device: torch.device):
    """bf16 autocast on ``device`` for ``amp="bf16"``, nothing for ``"none"``."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "none":
        return contextlib.nullcontext()
    raise ValueError(f"amp must be 'bf16' or 'none', got {amp!r}")


def checkpoint(path: Path, **state) -> None:
    """``torch.save`` of ``state`` to ``path`` through a temporary file: a killed save leaves the old one."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def start_run(cfg: Any, resume: bool) -> Path:
    """Check and create the run folder and write the resolved config (rank 0 writes).

    Args:
        cfg: a training config dataclass; its ``out_dir`` is the run folder.
        resume: continue the run in the folder rather than refuse a non-empty one.

    Raises:
        FileExistsError: the folder holds a run and ``resume`` is off.
    """
    run = Path(cfg.out_dir)
    check_run_folder(run, resume)
    distributed.barrier()  # every rank has looked before rank 0 writes
    if distributed.is_main():
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
    return run


def check_run_folder(run: Path, resume: bool) -> None:
    """Refuse a non-empty run folder unless ``resume``."""
    if run.exists() and any(run.iterdir()) and not resume:
        raise FileExistsError(
            f"{run}: run folder exists and is not empty; use --resume to continue it or choose another --out"
        )


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's draws: the same on a resume (a resumed run repeats the epoch exactly) and on every rank."""
    return seed * 100_003 + epoch


def rank_seed(seed: int, epoch: int) -> int:
    """:func:`epoch_seed`, different on each rank under torchrun (augmentation differs between ranks)."""
    return epoch_seed(seed, epoch) + 1_000_003 * distributed.rank()
