"""``covidcxr segment``, ``predict`` and ``serve``: the models on a user's images."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .common import SAMPLE, UserError, writable_out


def cmd_segment(args: argparse.Namespace) -> int:
    from ..batch import collect_inputs, read_batches, unique_stems
    from ..infer import LungSegmenter
    from ..io import mask_png, rgb_png
    from ..plots import overlay

    files, errors = collect_inputs(args.inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    out = writable_out(args.out)
    segmenter = LungSegmenter.from_spec(args.lung_weights)
    stems = unique_stems(files)
    failed = len(errors)
    with tqdm(total=len(files), desc="segmenting", unit="img", disable=len(files) < 2 or args.quiet) as bar:
        for batch in read_batches(files, args.batch_size):
            good = [(i, im) for i, im, _ in batch if im is not None]
            masks = segmenter.segment([im for _, im in good], postprocess=not args.no_postprocess)
            results = dict(zip([i for i, _ in good], masks))
            for i, image, err in batch:
                if err is not None:
                    failed += 1
                    tqdm.write(f"error: {err}", file=sys.stderr)
                    continue
                mask = results[i]
                mask_png(mask, out / f"{stems[i]}_lungs.png")
                rgb_png(overlay(image, mask), out / f"{stems[i]}_overlay.png")
                tqdm.write(
                    f"{files[i]}\tlung area {mask.mean():.1%}\t{image.shape[1]}x{image.shape[0]}\t-> {out / (stems[i] + '_lungs.png')}"
                )
            bar.update(len(batch))
    if failed:
        print(f"{failed} input(s) failed; {len(files) - (failed - len(errors))} segmented", file=sys.stderr)
    return 2 if failed else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..batch import output_lock

    if args.batch_size < 1 or args.workers < 0:
        raise UserError(f"need --batch-size >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    # Before the models load (seconds): a bad --out, or another run writing there, is said at once.
    with output_lock(writable_out(args.out)):
        return predict_locked(args)


def predict_locked(args: argparse.Namespace) -> int:
    """``covidcxr predict`` once its output folder is locked: stdout gets one result line per image, stderr the rest."""
    from ..batch import RunCounts
    from ..infer import Predictor
    from ..predict import predict_files

    inputs = args.inputs or ([] if args.csv else [str(SAMPLE)])
    if args.dicom_out:
        check_dicom_extra("covidcxr predict --dicom-out")
    predictor = Predictor.load(
        lungs=args.lung_weights,
        diagnosis=args.diagnosis_weights,
        gate=args.gate_weights,
        use_gate=not args.no_gate,
        saliency=not args.no_saliency,
        severity=not args.no_severity,
        lesions=args.lesion_weights,
        severity_head=args.severity_weights,
        backend=args.backend,
        onnx_dir=args.onnx_dir,
    )
    counts = RunCounts()
    rows = predict_files(
        inputs,
        args.out,
        predictor,
        batch_size=args.batch_size,
        report=not args.no_report,
        progress=not args.quiet,
        csv_files=args.csv or (),
        workers=args.workers,
        overwrite=args.overwrite,
        retry_errors=args.retry_errors,
        counts=counts,
        dicom_out=args.dicom_out,
    )
    start = time.perf_counter()
    for row in rows:
        write_row(row, counts)
    seconds = time.perf_counter() - start
    print(run_summary(counts, seconds, Path(args.out) / "predictions.jsonl"), file=sys.stderr)
    return 2 if counts.failed or counts.skipped_errors else 0


def result_line(row: dict) -> str:
    """The stdout line of a reading: ``path<TAB>prediction<TAB>[probabilities]``, then ``<TAB>uncertain: why`` if unsure."""
    probs = "  ".join(f"{c} {p:.1%}" for c, p in row["probabilities"].items())
    line = f"{row['path']}\t{row['prediction']}\t[{probs}]"
    if row.get("uncertain"):
        line += f"\tuncertain: {row.get('uncertain_reason') or 'unspecified'}"
    return line


def write_row(row: dict, counts) -> None:
    """One new row of ``predictions.jsonl``: its result line on stdout, its error or warnings on stderr.

    Written with ``tqdm.write``, so the lines never break the progress bar; refusals are counted by reason
    into ``counts.refused``.
    """
    if "error" in row:
        tqdm.write(f"error: {row['error']}", file=sys.stderr)
        if row.get("refusal_reason"):
            counts.refused[row["refusal_reason"]] = counts.refused.get(row["refusal_reason"], 0) + 1
        return
    tqdm.write(result_line(row), file=sys.stdout)
    for warning in row.get("warnings") or ():
        tqdm.write(f"warning: {row['path']}: {warning}", file=sys.stderr)
    if row.get("dicom_note"):
        tqdm.write(f"note: {row['dicom_note']}", file=sys.stderr)


def run_summary(counts, seconds: float, jsonl: Path) -> str:
    """The last line of a predict run, e.g. ``12 read, 2 refused (1 lateral, 1 ct), 1 failed, 3.4 images/s; results: ...``.

    Args:
        counts: the run's :class:`covidcxr.batch.RunCounts`, refusals counted by reason.
        seconds: wall time of the loop over the inputs (models loaded).
        jsonl: the results file.
    """
    refused = sum(counts.refused.values())
    parts = [f"{counts.done} read"]
    if refused:
        reasons = sorted(counts.refused.items(), key=lambda kv: (-kv[1], kv[0]))
        parts.append(f"{refused} refused (" + ", ".join(f"{n} {why}" for why, n in reasons) + ")")
    parts.append(f"{counts.failed - refused} failed")
    if counts.skipped:
        kept = f"{counts.skipped} skipped (already in predictions.jsonl"
        if counts.skipped_errors:
            kept += f"; {counts.skipped_errors} of them errors: --retry-errors runs them again"
        parts.append(kept + ")")
    rows = counts.done + counts.failed
    parts.append(f"{rows / seconds if seconds > 0 else 0.0:.1f} images/s")
    return ", ".join(parts) + f"; results: {jsonl}"


def check_dicom_extra(what: str) -> None:
    """Say at once, before the models load, that ``what`` needs highdicom and pynetdicom."""
    try:
        import highdicom  # noqa: F401
        import pynetdicom  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"{what} needs the dicom extra ({err.name} is missing): pip install 'covidcxr[dicom]'"
        ) from err


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..web import create_app
    except ImportError as err:
        raise RuntimeError(
            f"covidcxr serve needs the serve extra ({err.name} is missing): pip install 'covidcxr[serve]'"
        ) from err
    check_serve_limits(args)
    app = create_app(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        use_gate=not args.no_gate,
        saliency=not args.no_saliency,
        severity=not args.no_severity,
        backend=args.backend,
        onnx_dir=args.onnx_dir,
        max_pixels=args.max_pixels,
        max_queue=args.max_queue,
        allowed_hosts=allowed_hosts(args.host, args.allowed_host),
        read_timeout=args.read_timeout,
    )
    print(
        f"covidcxr: web page and API on http://{args.host}:{args.port}/ (API docs at /docs); research and teaching only",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        timeout_keep_alive=args.timeout_keep_alive,
        limit_concurrency=args.limit_concurrency,
    )
    return 0


def check_serve_limits(args: argparse.Namespace) -> None:
    """Fill in ``--max-pixels``'s default and refuse a limit that is not positive, before the models load."""
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    from ..io import SERVE_MAX_PIXELS

    args.max_pixels = SERVE_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    for name, value in (
        ("--max-pixels", args.max_pixels),
        ("--max-queue", args.max_queue),
        ("--limit-concurrency", args.limit_concurrency),
        ("--timeout-keep-alive", args.timeout_keep_alive),
        ("--read-timeout", args.read_timeout),
    ):
        if value <= 0:
            raise UserError(f"{name} must be positive, got {value}")


def allowed_hosts(host: str, extra: list[str] | None) -> list[str]:
    """Host names the server answers to: the loopback names, ``--host`` unless a wildcard, and each ``--allowed-host``."""
    from ..web.app import LOOPBACK_HOSTS

    names = [*LOOPBACK_HOSTS, *([] if host in ("0.0.0.0", "::", "") else [host]), *(extra or [])]
    return list(dict.fromkeys(n.strip("[]").lower() for n in names))
