"""The reading on files: read, run the :class:`~covidcxr.infer.Predictor`, write the PNGs and the rows.

For each input ``predict_files`` writes ``<stem>_lungs.png`` (the input's pixel size),
``<stem>_heatmap.png`` (Grad-CAM of the predicted class, 8-bit, the input's pixel size),
``<stem>_report.png`` and one line of ``predictions.jsonl``; an input it cannot read or
refuses gets a line with ``error`` instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .batch import (
    Done,
    Item,
    RunCounts,
    drop_error_rows,
    expand_inputs,
    read_batches,
    read_predictions,
    resume_key,
    trim_heap,
    unique_stems,
)
from .infer import Predictor, Result
from .io import heatmap_png, mask_png
from .report import save_report

log = logging.getLogger(__name__)

#: ``read_rows(files, stems, out, report)``: yields ``(inputs finished, their rows)`` as they finish.
ReadRows = Callable[[list[str], list[str], Path, bool], Iterable[tuple[int, Iterable[dict]]]]

#: How to read an image the gate refused, said to a command-line user (the Python API and the web page say it their way).
CLI_OVERRIDE = "use --no-gate to force a reading (research use)"


def predict_files(
    inputs: list[str],
    out_dir: str | Path,
    predictor: Predictor,
    batch_size: int = 8,
    report: bool = True,
    progress: bool = True,
    *,
    csv_files: Sequence[str | Path] = (),
    workers: int = 0,
    overwrite: bool = False,
    retry_errors: bool = False,
    counts: RunCounts | None = None,
    read_rows: ReadRows | None = None,
    dicom_out: bool = False,
) -> Iterator[dict]:
    """Run the pipeline on files, folders, glob patterns and CSV lists; yields each new row as it is written.

    Resumable: rows are appended to ``OUT/predictions.jsonl`` and inputs that already have a row
    there are skipped, those whose row is an error too unless ``retry_errors`` (their error rows
    are then removed and the inputs run again). An output stem, once written, stays with its
    input, and the same input list always gives the same stems, so a resumed run names its files
    as one uninterrupted run would have.

    Memory does not grow with the number of inputs: only the paths (with their output stems) and
    the paths already done are held; decoded images live for one batch and rows go to disk at once.

    Args:
        inputs: files, folders and glob patterns (see :func:`covidcxr.batch.expand_inputs`).
        out_dir: output folder.
        predictor: the loaded models.
        batch_size: images decoded and run together.
        report: write the report PNGs (slow).
        progress: show a progress bar.
        csv_files: CSV files listing more inputs (see :func:`covidcxr.batch.read_csv_paths`).
        workers: processes decoding images in parallel (0: in this process); models always run here.
        overwrite, retry_errors: start ``predictions.jsonl`` afresh; run again the inputs whose row is an error.
        counts: filled in as the run goes (inputs, skipped, done, failed), for a summary.
        read_rows: what reads the inputs still to do (default :func:`read_here`, here, with ``batch_size``
            and ``workers``; :class:`covidcxr.raydata.RayRows`: a Ray cluster). Listing, resume and writing stay here.
        dicom_out: for DICOM inputs also write ``<stem>_seg.dcm``, ``_sr.dcm`` and (with the report)
            ``_sc.dcm`` (:mod:`covidcxr.dicom.outputs`; row key ``dicom``); other inputs get ``dicom_note``.

    Yields:
        Each row appended to ``predictions.jsonl``: results, or ``path`` and ``error``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "predictions.jsonl"
    counts = counts if counts is not None else RunCounts()
    files, missing = expand_inputs(inputs, csv_files)
    done = Done() if overwrite else read_predictions(jsonl)
    stems, todo = _plan(jsonl, files, missing, done, predictor.models, retry_errors, counts)
    # Counts images, one step per row written: inputs already in predictions.jsonl start it off.
    bar = tqdm(total=counts.inputs, initial=counts.skipped, desc="predict", unit="image", disable=not progress)
    with open(jsonl, "w" if overwrite else "a") as fh, bar:

        def emit(row: dict) -> dict:
            fh.write(json.dumps(row) + "\n")
            fh.flush()  # a killed run loses at most the row being written
            if "error" in row:
                counts.failed += 1
            else:
                counts.done += 1
            bar.set_postfix(read=counts.done, failed=counts.failed, refresh=False)
            bar.update(1)
            return row

        for raw, msg in missing:
            if raw not in done:
                yield emit({"path": raw, "error": f"{raw}: {msg}"})
        if read_rows is not None and dicom_out:
            raise ValueError("--dicom-out is written by the local engine; leave out --engine ray for DICOM results")
        read_rows = read_rows or partial(
            read_here, predictor, batch_size=batch_size, workers=workers, dicom_out=dicom_out
        )
        for _, rows in read_rows([files[i] for i in todo], [stems[i] for i in todo], out, report):
            for row in rows:
                counts.decoded += "error" not in row  # the throughput counts images read
                yield emit(row)


def read_here(
    predictor: Predictor,
    files: list[str],
    stems: list[str],
    out: Path,
    report: bool,
    *,
    batch_size: int = 8,
    workers: int = 0,
    dicom_out: bool = False,
) -> Iterator[tuple[int, Iterator[dict]]]:
    """The local engine: batches decoded here (or in ``workers`` processes) and read by ``predictor``.

    Yields:
        ``(len(batch), its rows)`` per batch, in file order; the rows are made (and their PNGs
        written) as they are taken.
    """
    for batch in read_batches(files, batch_size, workers):
        yield len(batch), read_items(predictor, batch, files, stems, out, report, dicom_out)
        del batch
        trim_heap()  # memory stays flat over thousands of batches (see covidcxr.batch.trim_heap)


def read_items(
    predictor: Predictor,
    batch: list[Item],
    files: Sequence[str],
    stems: Sequence[str],
    out: Path,
    report: bool,
    dicom_out: bool = False,
) -> Iterator[dict]:
    """The rows of one decoded batch (items index ``files`` and ``stems``): read errors first, then the readings."""
    for j, _, err in batch:
        if err is not None:
            yield {"path": files[j], "error": err}
    good = [(j, im) for j, im, _ in batch if im is not None]
    yield from _read_batch(predictor, good, files, stems, out, report, dicom_out)


def _plan(
    jsonl: Path, files: list[str], missing: list, done: Done, models: dict, retry_errors: bool, counts: RunCounts
):
    """Output stems of every input and the indices still to read; errors to run again are dropped from the file."""
    if done.models - {json.dumps(models, sort_keys=True)}:
        raise ValueError(
            f"{jsonl} holds rows made by other weights or options (--no-severity?) than this run's {sorted(models)}; "
            "pass the same ones to resume, or --overwrite to start afresh, or another --out"
        )
    if retry_errors and done.errors:
        retry = {p for p in chain(files, (raw for raw, _ in missing)) if resume_key(p) in done.errors}
        drop_error_rows(jsonl, retry)
        done.errors -= {resume_key(p) for p in retry}
    # Inputs are matched by real path, so a folder spelled another way than last time keeps its names.
    reserved = {**done.stems, **{f: stem for f in files if (stem := done.stems.get(resume_key(f))) is not None}}
    stems = unique_stems(files, reserved)  # over the full list, so names do not depend on what was done
    todo = [i for i, f in enumerate(files) if f not in done]
    counts.inputs = len(files) + len(missing)
    counts.skipped = counts.inputs - len(todo) - sum(raw not in done for raw, _ in missing)
    counts.skipped_errors = sum(resume_key(p) in done.errors for p in chain(files, (raw for raw, _ in missing)))
    if counts.skipped:
        log.info(
            "%s: %d of %d inputs already done, skipped (%d with errors%s)",
            jsonl,
            counts.skipped,
            counts.inputs,
            counts.skipped_errors,
            "; --retry-errors runs them again" if counts.skipped_errors else "",
        )
    return stems, todo


def _read_batch(
    predictor: Predictor,
    good: list,
    files: Sequence[str],
    stems: Sequence[str],
    out: Path,
    report: bool,
    dicom_out: bool = False,
):
    """The rows of one decoded batch, its PNGs written; a failure to write one input costs its row only."""
    results = predictor.run([im for _, im in good]) if good else []
    for (i, image), res in zip(good, results, strict=True):
        res.path = files[i]
        if not res.ok:
            res.error = f"{files[i]}: {res.error}" + (f"; {CLI_OVERRIDE}" if res.overridable else "")
        try:
            row = write_outputs(res, image, stems[i], out, report)
            yield write_dicom(res, row, files[i], stems[i], out) if dicom_out and res.ok else row
        except Exception as err:  # its name, a full disk: the batch goes on
            log.info("%s: writing the outputs failed", files[i], exc_info=True)  # the traceback with -v only
            yield {
                "path": files[i],
                "error": f"{files[i]}: could not write its outputs ({type(err).__name__}: {err}); "
                "fix the cause and run again with --retry-errors",
            }


def write_outputs(result: Result, image: np.ndarray, stem: str, out: Path, report: bool = True) -> dict:
    """Write a reading's PNGs into ``out`` (``<stem>_lungs.png``, ``_heatmap.png``, ``_report.png``); returns its JSON row."""
    if not result.ok:
        return result.to_dict()
    files = {"lung_mask": str(out / f"{stem}_lungs.png"), "heatmap": None, "report": None}
    mask_png(result.lung_mask, files["lung_mask"])
    if result.heatmap is not None:
        files["heatmap"] = str(out / f"{stem}_heatmap.png")
        heatmap_png(result.heatmap, files["heatmap"])
    if report:
        files["report"] = str(out / f"{stem}_report.png")
        write_report(result, image, files["report"])
    return result.to_dict(files)


def write_dicom(result: Result, row: dict, source: str, stem: str, out: Path) -> dict:
    """Add the DICOM results of a DICOM input to its row (``dicom``: their paths), or a ``dicom_note`` for another input."""
    from .dicom.outputs import dicom_row

    report = Path(row["report"]).read_bytes() if row.get("report") else None
    extra = dicom_row(source, source, result, row, report)
    if "dicom" in extra:
        extra["dicom"] = extra["dicom"].save(out, stem)
    return row | extra


def write_report(result: Result, image: np.ndarray, path) -> None:
    """The report PNG of a reading (a path or a binary file object)."""
    save_report(path, image, result)
