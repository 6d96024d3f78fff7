"""Many files in, one output set per file out: input discovery, unique output names, batching, resume.

Inputs are files, folders (searched recursively for supported extensions), glob patterns
(expanded here, so a quoted pattern works where the shell does not expand it) and CSV files
listing paths. Reading runs in a ``torch.utils.data.DataLoader`` so that worker processes can
decode images while the models run in the main process; a file that cannot be read becomes an
error item, never an exception. ``read_predictions`` reads what an earlier run of ``covidcxr
predict`` wrote, so that a killed or extended run carries on where it stopped, and
``output_lock`` keeps a second run from writing to the same folder at the same time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import ImageReadError, read_image
from .inputs import collect_inputs, expand_inputs, read_csv_paths  # noqa: F401  (the public names of the package)
from .workers import HELD_LOCKS, decoding_loader

log = logging.getLogger(__name__)

#: Longest output stem, in bytes: room for "-NN_heatmap.png" within the 255-byte limit of a file name.
MAX_STEM_BYTES = 200
#: The lock file ``covidcxr predict`` holds in its output folder while it writes there.
LOCK_NAME = ".predictions.lock"

#: One decoded input: (index into the file list, image or None, error message or None).
Item = tuple[int, np.ndarray | None, str | None]


def unique_stems(files: Sequence[str | Path], reserved: Mapping[str, str] | None = None) -> list[str]:
    """Output stems, one per file: the file stem, suffixed ``-2``, ``-3``… where it is taken.

    The name of each file depends only on the files before it in the list (and on
    ``reserved``), so the same list always gives the same names.

    Args:
        files: input files, in processing order.
        reserved: stems an earlier run already wrote, by input path: those paths keep theirs
            and no other file gets one of them.

    Returns:
        One distinct stem per file.
    """
    reserved = reserved or {}
    used = set(reserved.values())
    next_n: dict[str, int] = {}  # every candidate of a stem below this number is taken
    out = []
    for f in files:
        if str(f) in reserved:
            out.append(reserved[str(f)])
            continue
        stem = _short(Path(f).stem)
        n = next_n.get(stem, 1)
        while (cand := stem if n == 1 else f"{stem}-{n}") in used:
            n += 1
        next_n[stem] = n + 1
        used.add(cand)
        out.append(cand)
    return out


def _short(stem: str) -> str:
    """``stem`` cut to :data:`MAX_STEM_BYTES` bytes, on a character boundary, so ``STEM_heatmap.png`` is a valid file name."""
    stem = stem[:MAX_STEM_BYTES]
    while len(os.fsencode(stem)) > MAX_STEM_BYTES:  # multi-byte characters
        stem = stem[:-1]
    return stem


class ImageFiles:
    """Images of a list of files, decoded on demand; a file that cannot be read gives its error.

    A map-style dataset for ``torch.utils.data.DataLoader`` (which needs only ``__len__`` and
    ``__getitem__``, so this module imports no PyTorch: the onnxruntime backend runs without it).

    Args:
        files: paths of the image files.

    Items are ``(index, image (H, W) float32 in [0, 1] or None, error message or None)``.
    """

    def __init__(self, files: Sequence[str | Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        path = self.files[i]
        try:
            return i, read_image(path), None
        except ImageReadError as err:
            return i, None, str(err)
        except Exception as err:  # a decoder bug must cost one row, not the whole batch job
            log.warning("%s: unexpected error while reading", path, exc_info=True)
            return i, None, f"{path}: could not read the image ({type(err).__name__}: {err})"


def keep_items(batch: list[Item]) -> list[Item]:
    """DataLoader collate that leaves the items alone: images differ in size, some are errors."""
    return batch


def read_batches(files: Sequence[str | Path], batch_size: int, workers: int = 0) -> Iterator[list[Item]]:
    """Yield batches of ``(index, image or None, error or None)``, in file order.

    With ``workers`` > 0 a ``torch.utils.data.DataLoader`` decodes in that many processes,
    ``batch_size`` images per task, each worker a batch or two ahead; with 0 the files are
    decoded here, one batch at a time (what a DataLoader without workers does, without
    importing PyTorch). Bad files become errors, not exceptions.

    Args:
        files: image files.
        batch_size: items per batch (the last batch may be smaller).
        workers: processes decoding in parallel (0: decode in this process).
    """
    if batch_size < 1 or workers < 0:
        raise ValueError(f"need --batch-size >= 1 and --workers >= 0, got {batch_size} and {workers}")
    dataset = ImageFiles(files)
    if workers == 0 or not files:
        return _batches_here(dataset, batch_size)
    return iter(decoding_loader(dataset, batch_size, workers, keep_items))


def _batches_here(dataset: ImageFiles, batch_size: int) -> Iterator[list[Item]]:
    for start in range(0, len(dataset), batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]


def resume_key(path: str | Path) -> str:
    """An input's identity for resuming: its real path (``scans/a.png``, ``./scans/a.png``, ``/abs/scans/a.png``)."""
    return os.path.realpath(path)


@dataclass
class Done:
    """What an earlier run left in ``predictions.jsonl``, by :func:`resume_key` of each row's path.

    Attributes:
        stems: output stem of each input read without error, by resume key.
        errors: resume keys of inputs whose only rows are errors.
        models: the distinct ``model`` entries of the rows read without error (JSON text).
    """

    stems: dict[str, str] = field(default_factory=dict)
    errors: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)

    def __contains__(self, path: str) -> bool:
        key = resume_key(path)
        return key in self.stems or key in self.errors


def read_predictions(jsonl: str | Path) -> Done:
    """Scan a ``predictions.jsonl`` for resuming; an incomplete last line is cut off the file.

    A run killed while writing leaves a last line without its newline: that line is removed
    (its input is simply run again), so rows appended next start on a line of their own.

    Args:
        jsonl: the file; a missing file means nothing is done.

    Returns:
        The paths done and the output stems they used.

    Raises:
        ValueError: A complete line is not a JSON row with a ``path`` (the file is not one this
            tool wrote, or was edited).
    """
    done = Done()
    jsonl = Path(jsonl)
    if not jsonl.is_file():
        return done
    good_end = 0
    with open(jsonl, "rb+") as fh:
        for n, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                log.warning(
                    "%s: dropping an incomplete last line (%d bytes; a killed run?); that input is run again",
                    jsonl,
                    len(line),
                )
                fh.truncate(good_end)
                break
            good_end += len(line)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path = resume_key(row["path"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(
                    f"{jsonl}: line {n} is not a prediction row; fix or delete it, or start afresh with --overwrite"
                ) from None
            if "error" in row:
                if path not in done.stems:
                    done.errors.add(path)
            else:
                done.errors.discard(path)
                mask = row.get("lung_mask")
                done.stems[path] = Path(mask).name.removesuffix("_lungs.png") if mask else Path(row["path"]).stem
                done.models.add(json.dumps(row.get("model"), sort_keys=True))
    return done


class OutputBusyError(RuntimeError):
    """Another process holds the output folder's lock (see :func:`output_lock`)."""


@contextmanager
def output_lock(out_dir: str | Path, what: str = "covidcxr predict") -> Iterator[Path]:
    """Hold the output folder for one writer: an exclusive ``fcntl.flock`` on ``OUT/.predictions.lock``.

    Two runs appending to one ``predictions.jsonl`` wrote every row twice, and a
    ``--retry-errors`` run (:func:`drop_error_rows` replaces the file) lost the rows another run
    appended meanwhile. While the lock is held the file holds the holder's process id and command
    line, for the message another run gets. The lock is the kernel's: it goes with the process,
    so a killed run leaves no stale lock behind (the file stays, empty or not, and is reused).

    Args:
        out_dir: the output folder; it must exist.
        what: the holder, named in the file.

    Yields:
        The lock file's path.

    Raises:
        OutputBusyError: another process holds the lock; the message names it.
    """
    path = Path(out_dir) / LOCK_NAME
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), "r+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = " ".join(fh.read().split())[:300] or "a process that has not yet written its id"
            raise OutputBusyError(
                f"{out_dir} is in use by another run (pid {holder}); wait for it to finish, or pass another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}: {what} {' '.join(sys.argv[1:])}\n")
        fh.flush()
        HELD_LOCKS.add(fh.fileno())  # decoding workers forked meanwhile close their copy (covidcxr.batch.workers)
        try:
            yield path
        finally:
            HELD_LOCKS.discard(fh.fileno())
            fh.seek(0)
            fh.truncate()  # the file stays: deleting it would let a third run lock a new file beside a waiting one


def drop_error_rows(jsonl: str | Path, paths: set[str]) -> None:
    """Remove the error rows of ``paths`` from ``jsonl`` (atomically), before they are retried.

    The file is replaced, not edited: call it only while holding :func:`output_lock`, or rows
    another run appends to the old file meanwhile are lost.
    """
    jsonl = Path(jsonl)
    if not paths or not jsonl.is_file():
        return
    keys = {resume_key(p) for p in paths}
    tmp = jsonl.with_name(jsonl.name + ".tmp")
    with open(jsonl, "rb") as src, open(tmp, "wb") as dst:
        for line in src:
            row = json.loads(line) if line.strip() else None
            if not (row and "error" in row and resume_key(row["path"]) in keys):
                dst.write(line)
    os.replace(tmp, jsonl)


def trim_heap() -> bool:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim(0)``); False elsewhere.

    Images and activations of ever-changing sizes fragment glibc's heap, and over thousands
    of batches the resident memory creeps up through pages that are free but kept. Trimming
    once per batch returns them (cheap next to a batch's work) without changing how memory is
    allocated, so the per-operation speed of the models is untouched.
    """
    import ctypes
    import ctypes.util

    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


@dataclass
class RunCounts:
    """Inputs of one ``covidcxr predict`` run, by what became of them.

    Attributes:
        inputs: files found plus inputs that name nothing.
        skipped: inputs already in ``predictions.jsonl`` (not run again).
        skipped_errors: of those, inputs whose row there is an error (``--retry-errors`` retries them).
        done: rows written with results.
        failed: error rows written (unreadable, refused, missing).
        refused: of those, refusals by reason (the row's ``refusal_reason``: lateral, ct, no_chest, photo, unsure, blank).
        decoded: images decoded and given to the models (what a throughput counts).
    """

    inputs: int = 0
    skipped: int = 0
    skipped_errors: int = 0
    done: int = 0
    failed: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    decoded: int = 0
