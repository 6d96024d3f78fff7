"""Decoding workers that die with the run that started them.

``covidcxr predict --workers N`` decodes images in N processes forked by a
``torch.utils.data.DataLoader``. When the run was killed (SIGKILL, SIGTERM, an out-of-memory
kill) its workers used to live on, blocked writing to a queue nobody reads, and holding the
forked copy of the output folder's lock, so the same command was refused until someone killed
them by hand. :func:`worker_init` runs first in each worker and makes it

- die with its parent: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, else a watchdog thread
  that exits once the parent is gone;
- let go of the parent's output lock (:data:`HELD_LOCKS`, filled by :func:`covidcxr.batch.output_lock`):
  the kernel releases an ``flock`` when the last descriptor of it closes, and a worker's copy
  would keep it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
#: File descriptors of the output locks this process holds (:func:`covidcxr.batch.output_lock`);
#: a forked worker closes its copies.
HELD_LOCKS: set[int] = set()
#: Seconds between two looks at the parent, where the kernel cannot be asked to signal its death.
WATCH_INTERVAL_S = 0.5


def decoding_loader(dataset: Any, batch_size: int, workers: int, collate_fn: Callable) -> Any:
    """A ``torch.utils.data.DataLoader`` over ``dataset`` in order, whose ``workers`` processes die with this one."""
    from torch.utils.data import DataLoader

    init = functools.partial(worker_init, os.getpid())
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_fn, worker_init_fn=init
    )


def worker_init(parent_pid: int, worker_id: int = 0) -> None:
    """First thing in a decoding worker: die with ``parent_pid`` and close the parent's output locks.

    Use as ``worker_init_fn=functools.partial(worker_init, os.getpid())``.

    Args:
        parent_pid: the process id of the run that forks the workers.
        worker_id: the DataLoader's number for this worker (unused).
    """
    for fd in list(HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)  # this copy only: the parent keeps its lock
    HELD_LOCKS.clear()
    die_with_parent(parent_pid)


def die_with_parent(parent_pid: int) -> None:
    """End this process as soon as ``parent_pid`` (its parent) ends, however it ends.

    Args:
        parent_pid: the parent's process id, taken in the parent before the fork: a parent that
            died before this call is noticed too (the process then has another parent).
    """
    if not _pdeathsig(signal.SIGKILL):
        threading.Thread(target=_watch, args=(parent_pid,), name="covidcxr-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def _pdeathsig(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent ends; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_INTERVAL_S)
    os._exit(1)
