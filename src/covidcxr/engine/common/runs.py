"""What every trainer shares: the device, bf16 autocast, atomic checkpoints, the run folder, epoch seeds."""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import Any

import torch

from ...config import save_config
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


# ---------------------------------------------------------------------------
# What a run records and where it exports


#: The command line the cli is running (:func:`recorded_command`); None outside it.
_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("covidcxr_command", default=None)


@contextlib.contextmanager
def recorded_command(command: str):
    """Inside the block, specs record ``command`` where their trainer was given none (the cli's command line)."""
    token = _COMMAND.set(command)
    try:
        yield
    finally:
        _COMMAND.reset(token)


def command_line(command: str | None = None) -> str:
    """The command that started a run: ``command`` as the cli passes it, else the cli's
    :func:`recorded_command`, else this process's ``sys.argv``."""
    import shlex
    import sys

    return command or _COMMAND.get() or shlex.join(sys.argv)


def provenance(config: dict, command: str | None = None, quick: bool = False) -> dict:
    """The ``training`` entries every spec carries: command line, config hash (sorted JSON), smoke marker."""
    from ...config import config_hash

    out = {"command": command_line(command), "config_sha256": config_hash(config)}
    if quick:
        out["smoke"] = True
    return out


def export_name(configured: str, prefix: str, run: str | Path, quick: bool = False) -> str:
    """The name of an exported model: the config's ``export_name``, else ``<prefix>-<run folder name>``; ``-quick`` for a smoke run."""
    name = configured or f"{prefix}-{Path(run).name}"
    return f"{name}-quick" if quick and not name.endswith("-quick") else name


def check_export(export_dir: str | Path, names: list[str], run: str | Path, force: bool = False) -> Path:
    """Refuse (ValueError) an export into the installed package's weights folder, or over the spec of a
    shipped model name outside this run's own ``export`` folder, unless ``force``; returns the folder."""
    from ...specs import SHIPPED, WEIGHTS_DIR

    target = Path(export_dir).resolve()
    if force:
        return Path(export_dir)
    if target == WEIGHTS_DIR.resolve():
        raise ValueError(
            f"--export {export_dir} is the installed package's weights folder: the export would replace the shipped "
            "models; add --force to do that on purpose (e.g. to reproduce them), or leave --export out to write into the run folder"
        )
    own = (Path(run) / "export").resolve()
    for name in names:
        if name in SHIPPED.values() and (target / f"{name}.json").is_file() and target != own:
            raise ValueError(
                f"{target / (name + '.json')} is the spec of the shipped model {name}: the export would replace it; "
                "add --force to do that on purpose, or choose another --export"
            )
    return Path(export_dir)


def weights_record(spec: Any, path: str | Path | None = None) -> dict:
    """Which weights an evaluation read: the spec's name and sha256 (and its file, when known)."""
    out = {"name": spec.name, "sha256": spec.sha256}
    if path is not None:
        out["spec"] = str(path)
    return out
