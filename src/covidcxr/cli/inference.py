"""``covidcxr segment``, ``predict`` and ``serve``: the models on a user's images."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from itertools import chain
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
    check_engine(args)
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
    load = {
        "lungs": args.lung_weights,
        "diagnosis": args.diagnosis_weights,
        "gate": args.gate_weights,
        "use_gate": not args.no_gate,
        "saliency": not args.no_saliency,
        "severity": not args.no_severity,
        "lesions": args.lesion_weights,
        "severity_head": args.severity_weights,
        "backend": args.backend,
        "onnx_dir": args.onnx_dir,
    }
    predictor = Predictor.load(**load)  # with --engine ray: checks the weights, and what resuming needs
    read_rows = None
    if args.engine == "ray":
        from ..raydata import RayRows

        read_rows = RayRows(load, args.address, args.num_workers, args.gpus_per_worker, args.batch_size)
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
        read_rows=read_rows,
        dicom_out=args.dicom_out,
    )
    start = time.perf_counter()
    first = next(rows, None)  # the inputs are planned by now: say at once what a rerun skips
    if counts.skipped:
        tqdm.write(skipped_line(counts, Path(args.out) / "predictions.jsonl"), file=sys.stderr)
    for row in chain([first] if first is not None else [], rows):
        write_row(row, counts)
    seconds = time.perf_counter() - start
    jsonl = Path(args.out) / "predictions.jsonl"
    if read_rows is not None and read_rows.workers:
        print(ray_summary(read_rows), file=sys.stderr)
    if args.parquet:
        from ..raydata import write_parquet

        print(f"parquet copy: {write_parquet(jsonl)}", file=sys.stderr)
    backend = getattr(predictor, "backend", None)
    print(run_summary(counts, seconds, jsonl, backend), file=sys.stderr)
    return 2 if counts.failed or counts.skipped_errors else 0


def skipped_line(counts, jsonl: Path) -> str:
    """What a rerun leaves out, e.g. ``skipping 5 of 7 inputs already in out/predictions.jsonl (--overwrite reads them again)``."""
    line = f"skipping {counts.skipped} of {counts.inputs} inputs already in {jsonl} (--overwrite reads them again"
    if counts.skipped_errors:
        line += f"; {counts.skipped_errors} of them are errors: --retry-errors runs those again"
    return line + ")"


def check_engine(args: argparse.Namespace) -> None:
    """Refuse engine options that do not go together, and a missing Ray or pyarrow, before the models load."""
    if args.parquet and importlib.util.find_spec("pyarrow") is None:
        raise UserError("--parquet needs pyarrow, which is not installed: pip install 'covidcxr[ray]' (or pyarrow)")
    ray_only = [
        name
        for name, value in (
            ("--address", args.address),
            ("--num-workers", args.num_workers),
            ("--gpus-per-worker", args.gpus_per_worker),
        )
        if value
    ]
    if args.engine != "ray":
        if ray_only:
            raise UserError(f"{', '.join(ray_only)} only work with --engine ray; add it, or leave them out")
        return
    if args.workers:
        raise UserError(
            "--workers is for --engine local; with --engine ray each actor decodes its own batches "
            "(--num-workers sets how many actors)"
        )
    if args.num_workers is not None and args.num_workers < 1:
        raise UserError(f"--num-workers must be at least 1, got {args.num_workers}")
    if args.gpus_per_worker < 0:
        raise UserError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker:g}")
    if args.gpus_per_worker and args.backend != "torch":
        raise UserError("--gpus-per-worker runs the models on GPUs with PyTorch; leave out --backend onnxruntime")
    from ..raydata import require_ray

    require_ray()


def ray_summary(read_rows) -> str:
    """``ray: 2 workers, 3.1 + 2.9 = 6.0 images/s while busy (...)``: what sizes a cluster (workers x rate)."""
    rates = [w.rate for w in read_rows.workers.values()]
    if len(rates) <= 8:
        rate = " + ".join(f"{r:.1f}" for r in rates) + f" = {sum(rates):.1f} images/s while busy"
    else:
        rate = f"{min(rates):.1f} to {max(rates):.1f} each, {sum(rates):.1f} images/s together while busy"
    return (
        f"ray: {len(rates)} worker{'s' if len(rates) > 1 else ''}, {rate} "
        f"(a worker reads {sum(rates) / len(rates):.1f} images/s); cluster up in {read_rows.startup_seconds:.1f} s"
    )


def result_line(row: dict) -> str:
    """The stdout line of a reading: ``path<TAB>prediction<TAB>[probabilities]``, then its category and, if unsure,
    ``<TAB>uncertain: why; why``."""
    probs = "  ".join(f"{c} {p:.1%}" for c, p in row["probabilities"].items())
    line = f"{row['path']}\t{row['prediction']}\t[{probs}]"
    if row.get("category"):
        line += f"\t{row['category']['label']}"
    if row.get("uncertain"):
        why = "; ".join(r["text"] for r in row.get("uncertain_reasons") or []) or row.get("uncertain_reason")
        line += f"\tuncertain: {why or 'unspecified'}"
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


def run_summary(counts, seconds: float, jsonl: Path, backend: str | None = None) -> str:
    """The last line of a predict run, e.g. ``12 read, 2 refused (1 lateral, 1 ct), 1 failed, 3.4 images/s on onnxruntime; results: ...``.

    The throughput counts the images the models ran on; a run that ran them on none (every input
    missing, unreadable or already done) gives none.

    Args:
        counts: the run's :class:`covidcxr.batch.RunCounts`, refusals counted by reason.
        seconds: wall time of the loop over the inputs (models loaded).
        jsonl: the results file.
        backend: where the models ran (``torch``, ``onnxruntime``).
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
    on = f" on {backend}" if backend else ""
    if counts.decoded and seconds > 0:
        parts.append(f"{counts.decoded / seconds:.1f} images/s{on}")
    elif on:
        parts.append(f"models{on}")
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
            f"covidcxr serve needs {err.name}, which `pip install covidcxr` installs; it is missing here: "
            "pip install 'fastapi>=0.115' 'uvicorn>=0.30' python-multipart swagger-ui-bundle"
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
        upload_timeout=args.upload_timeout,
    )
    print(
        f"covidcxr: web page and API on http://{args.host}:{args.port}/ (API docs at /docs; models on "
        f"{app.state.backend}); research and teaching only",
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
        ("--upload-timeout", args.upload_timeout),
    ):
        if value <= 0:
            raise UserError(f"{name} must be positive, got {value}")


def allowed_hosts(host: str, extra: list[str] | None) -> list[str]:
    """Host names the server answers to: the loopback names, ``--host`` unless a wildcard, and each ``--allowed-host``."""
    from ..web.app import LOOPBACK_HOSTS

    names = [*LOOPBACK_HOSTS, *([] if host in ("0.0.0.0", "::", "") else [host]), *(extra or [])]
    return list(dict.fromkeys(n.strip("[]").lower() for n in names))
