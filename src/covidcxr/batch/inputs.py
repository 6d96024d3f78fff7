"""Inputs as a user names them (files, folders, quoted globs, CSV lists) -> the files to read, in order."""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..io import is_supported_file

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")


def expand_inputs(
    paths: Iterable[str | Path], csv_files: Iterable[str | Path] = ()
) -> tuple[list[str], list[tuple[str, str]]]:
    """Every input file, in a stable order, and one error per input that names nothing readable.

    Each input is, in this order of checks: an existing folder (searched recursively, supported
    extensions only, sorted), an existing file (kept whatever its extension: DICOM often has
    none), a glob pattern (``*``, ``?``, ``[``, and ``**`` for any depth of folders, as
    ``glob.glob(recursive=True)``; sorted; a matched folder is searched as above), else an error.
    The inputs listed in each of ``csv_files`` (see :func:`read_csv_paths`) follow the
    command-line ones and are treated alike. Folder searches and ``**`` follow symbolic links to
    folders but enter each real folder once, so a link to a parent folder neither loops nor
    repeats files. A file reached twice (also through another name: a link, ``..``) is kept once,
    at its first place, under the name it was first reached by.

    Args:
        paths: files, folders and glob patterns, as typed.
        csv_files: CSV files listing more inputs.

    Returns:
        (file paths as strings, ``(input, message)`` for each input that exists nowhere, matches
        nothing or is a folder without images).

    Raises:
        FileNotFoundError: A CSV file does not exist.
        ValueError: A CSV file holds no rows.
    """
    files: list[str] = []
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()  # real paths
    entries = [str(p) for p in paths]
    for table in csv_files:
        entries.extend(read_csv_paths(table))
    for raw in entries:
        found, error = _expand_one(raw)
        if error:
            errors.append((raw, error))
        for f in map(os.path.normpath, found):
            real = os.path.realpath(f)
            if real not in seen:
                seen.add(real)
                files.append(f)
    return files, errors


def _expand_one(raw: str) -> tuple[list[str], str | None]:
    p = Path(raw)
    if p.is_dir():
        found = _walk(p)
        return found, None if found else "folder holds no PNG, JPEG, TIFF, BMP or DICOM (.dcm) files"
    if p.is_file():
        return [str(p)], None
    if not _GLOB_CHARS.intersection(raw):
        return [], "file not found"
    found = []
    for match in sorted(_glob(raw)):
        m = Path(match)
        found.extend(_walk(m) if m.is_dir() else [str(m)] if m.is_file() else [])
    return (
        found,
        None
        if found
        else "pattern matches no file (quote it so that the shell leaves it to covidcxr, and check the folder)",
    )


def _walk(folder: Path) -> list[str]:
    """Supported files under ``folder``, sorted; linked folders are followed, each real folder once."""
    return sorted(
        os.path.join(d, f)
        for d, files in _folders(str(folder))
        for f in files
        if is_supported_file(f) and os.path.isfile(os.path.join(d, f))
    )


def _folders(top: str, hidden: bool = True) -> Iterator[tuple[str, list[str]]]:
    """``(folder, names in it)`` for ``top`` and every folder below, each real folder once.

    ``os.walk(followlinks=True)`` alone would loop forever on a link to a parent folder (and
    blow up exponentially on two): a folder whose real path was already entered is pruned.
    """
    entered: set[str] = set()
    for folder, subdirs, names in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in entered:
            subdirs[:] = []
            continue
        entered.add(real)
        subdirs[:] = sorted(d for d in subdirs if hidden or not d.startswith("."))
        yield folder, names + subdirs


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, but ``**`` enters each real folder once (no symlink loops)."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if _GLOB_CHARS.intersection(part))
    return list(_match(os.path.join(*parts[:first]) if first else os.curdir, parts[first:]))


def _match(folder: str, parts: Sequence[str]) -> Iterator[str]:
    if not parts:
        yield folder
        return
    part, rest = parts[0], parts[1:]
    if part == "**":  # this folder and every folder below it (hidden ones skipped, as glob does)
        for sub, _ in _folders(folder, hidden=False):
            yield from _match(sub, rest)
        return
    if not _GLOB_CHARS.intersection(part):
        path = os.path.join(folder, part)
        if os.path.lexists(path):
            yield from _match(path, rest) if not rest or os.path.isdir(path) else ()
        return
    try:
        names = os.listdir(folder)
    except OSError:  # not a folder, or unreadable: nothing matches there
        return
    if not part.startswith("."):
        names = [n for n in names if not n.startswith(".")]
    for name in sorted(fnmatch.filter(names, part)):
        path = os.path.join(folder, name)
        if not rest:
            yield path
        elif os.path.isdir(path):
            yield from _match(path, rest)


def collect_inputs(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Files, folders and glob patterns -> files (see :func:`expand_inputs`).

    Returns:
        (files in a stable order, one ``"input: problem"`` message per input that names nothing).
    """
    files, errors = expand_inputs(paths)
    return [Path(f) for f in files], [f"{raw}: {msg}" for raw, msg in errors]


def read_csv_paths(table: str | Path) -> list[str]:
    """The inputs a CSV file lists: its ``path`` column, else its first column.

    A first row holding a cell ``path`` (any case) is the header and names the column. Without
    one, the first row is data when its first cell names an existing file or folder or ends in
    an image extension, and is taken for a header otherwise (``filename,label``). Relative paths
    are resolved against the CSV file's folder; empty cells are skipped.

    Args:
        table: the CSV file.

    Returns:
        The listed paths, in file order.

    Raises:
        FileNotFoundError: ``table`` does not exist.
        ValueError: ``table`` holds no rows.
    """
    table = Path(table)
    if not table.is_file():
        raise FileNotFoundError(f"--csv {table}: file not found")
    with open(table, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"--csv {table}: the file is empty; expected a column 'path' or one path per line")
    names = [c.strip().lower() for c in rows[0]]
    if "path" in names:
        col, rows = names.index("path"), rows[1:]
    else:
        col = 0
        if not _looks_like_path(rows[0][0] if rows[0] else "", table.parent):
            log.info("%s: no 'path' column; reading the first column, %r", table, rows[0][0] if rows[0] else "")
            rows = rows[1:]
    cells = (row[col].strip() if len(row) > col else "" for row in rows)
    return [os.path.normpath(table.parent / cell) for cell in cells if cell]  # an absolute cell stays absolute


def _looks_like_path(cell: str, base: Path) -> bool:
    cell = cell.strip()
    return bool(cell) and (is_supported_file(cell) or (base / cell).exists())
