"""The ``covidcxr`` command: one console script, one subcommand per job."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger("covidcxr")

SAMPLE = Path(__file__).with_name("samples") / "sample_cxr.jpg"


def writable_out(out: str | Path) -> Path:
    """``--out`` as a folder this process can write to, created if missing: checked before any model loads.

    Args:
        out: the folder, as typed.

    Returns:
        The folder.

    Raises:
        ValueError: ``out`` is a file, lies under a file, or cannot be created or written to
            (read-only, another user's, a system folder such as /sys); one sentence.
    """
    path = Path(out)
    fix = "pass a folder you can write to as --out (it is created if missing)"
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # what counts is whether a file can be made there
            pass
        jsonl = path / "predictions.jsonl"
        if jsonl.exists():
            with open(jsonl, "ab"):
                pass
    except OSError as err:
        why = (
            "a part of the path is a file, not a folder"
            if isinstance(err, NotADirectoryError)
            else (err.strerror or str(err)).lower()
        )
        raise ValueError(f"--out {out}: cannot write there ({why}); {fix}") from None
    return path


def _cmd_segment(args: argparse.Namespace) -> int:
    from .batch import collect_inputs, read_batches, unique_stems
    from .infer import LungSegmenter
    from .io import mask_png, rgb_png
    from .plots import overlay

    files, errors = collect_inputs(args.inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    out = writable_out(args.out)
    segmenter = LungSegmenter.from_spec(args.weights)
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


def _train_config(args: argparse.Namespace, cls):
    """Config of a training command: defaults, then --config (or a resumed run's own), then --set."""
    from .config import load_config

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.data_root:
        overrides.append(f"data_root={args.data_root}")
    config = args.config
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out RUN_DIR, the run folder to continue")
        if config is None and (Path(args.out) / "config.yaml").is_file():
            config = Path(args.out) / "config.yaml"  # the killed run's own resolved config
    return load_config(cls, config, overrides)


def _cmd_study(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.study import QUICK, StudyConfig, run_study

    overrides = [f"{k}={v}" for k, v in QUICK.items()] if args.quick else []
    overrides += [f"out_dir={args.out or ('study-quick' if args.quick else 'study')}"]
    overrides += [f"data_root={args.data_root}"] if args.data_root else []
    summary = run_study(load_config(StudyConfig, args.config, overrides + list(args.set or [])))
    out = Path(summary["out_dir"])
    print(f"{len(summary['cells'])} cells -> {out / 'results.csv'}, {out / 'results.md'}")
    print(
        f"best by internal macro AUROC: {summary['best_internal']}; best by lungs-blacked-out AUROC closest to 0.5: {summary['best_shortcut_free']}; "
        f"best among those not reading outside the lungs: {summary['best_reading_lungs']}"
    )
    return 0 if summary["complete"] else 1


def _cmd_train_segmentation(args: argparse.Namespace) -> int:
    from .engine import distributed
    from .engine.segmentation import SegTrainConfig, main

    if args.adversarial:  # the flag is the config key, set last
        args.set = [*(args.set or []), "adversarial=true"]
    cfg = _train_config(args, SegTrainConfig)
    run = main(cfg, resume=args.resume, export_dir=args.export)
    if not distributed.is_main():  # under torchrun, rank 0 alone evaluates and writes
        return 0
    print(f"run folder: {run}")
    if args.export:
        # Shipping weights: record their test-split metrics in the spec they travel with.
        from .engine.evaluate_segmentation import evaluate_segmentation

        spec = Path(args.export) / f"{cfg.export_name}.json"
        summary = evaluate_segmentation(
            spec_path=spec, data_root=cfg.data_root, split="test", out_dir=run / "eval", update_spec=True
        )
        _print_seg_summary(summary)
        print(f"weights: {spec}")
    return 0


def _is_heads_config(path: str | None) -> bool:
    """A diagnosis config naming a ``design`` is the source-blind heads recipe; otherwise the CNN's."""
    import yaml

    return bool(path) and "design" in (yaml.safe_load(Path(path).read_text()) or {})


def _cmd_train_diagnosis(args: argparse.Namespace) -> int:
    from .engine import distributed
    from .engine.diagnosis import DiagTrainConfig, main

    if _is_heads_config(args.config) or any(o.startswith("design=") for o in args.set or []):
        from .engine.train_heads import HeadsConfig, train_heads

        cfg = _train_config(args, HeadsConfig)
        summary = train_heads(cfg, export_dir=args.export)
        print(
            f"run folder: {cfg.out_dir}\nweights: {summary['spec']}\ninternal test macro AUROC: {summary['internal_test']['macro_auroc_ci']['value']:.3f}"
        )
        if "loso" in summary:
            print((Path(cfg.out_dir) / "loso" / "loso.md").read_text())
        return 0
    cfg = _train_config(args, DiagTrainConfig)
    run = main(cfg, resume=args.resume, export_dir=args.export)
    if not distributed.is_main():
        return 0
    print(f"run folder: {run}")
    if args.export and cfg.folds <= 1:
        print(f"weights: {Path(args.export) / (cfg.export_name + '.json')}")
    return 0


def _cmd_train_severity(args: argparse.Namespace) -> int:
    from .engine.severity import SeverityConfig, main

    cfg = _train_config(args, SeverityConfig)
    run = main(cfg, cfg.out_dir, resume=args.resume, export_dir=args.export)
    print((run / "severity_eval.md").read_text())
    print(f"run folder: {run}")
    if args.export:
        print(
            f"weights: {Path(args.export) / 'unet_mobilenetv2_lesions.json'}, {Path(args.export) / 'severity_linear.json'}"
        )
    return 0


def _cmd_evaluate_severity(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.severity import SeverityConfig, evaluate_severity

    run = Path(args.run)
    config = run / "config.yaml" if (run / "config.yaml").is_file() else None
    cfg = load_config(SeverityConfig, config, [f"data_root={args.data_root}"] if args.data_root else None)
    evaluate_severity(cfg, run, args.out)
    print((Path(args.out) / "severity_eval.md").read_text())
    print(f"results: {Path(args.out) / 'severity_eval.json'}")
    return 0


def _cmd_evaluate_gate(args: argparse.Namespace) -> int:
    from .gate import evaluate_gate

    splits = ("train", "val", "test") if args.split == "all" else (args.split,)
    res = evaluate_gate(
        spec_path=args.weights, data_root=args.data_root, splits=splits, sources=args.source, out_dir=args.out
    )
    for src, row in sorted(res["all_splits"].items()):
        print(
            f"{src:>20}: frontal refused {row['refused']}/{row['n']} = {row['rate']:.1%} (95% CI {row['ci'][0]:.1%}-{row['ci'][1]:.1%}; {'+'.join(splits)})"
        )
    for split, r in res["results"].items():
        lc = r["lateral_ct"]
        if lc["n"]:
            print(
                f"{split:>20}: lateral/CT refused {lc['refused']}/{lc['n']} = {lc['rate']:.1%} (95% CI {lc['ci'][0]:.1%}-{lc['ci'][1]:.1%})"
            )
    print(f"table, JSON and contact sheet of refusals: {res['out']}/gate_eval.md, gate_eval.json, refused.png")
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from .export import export_onnx
    from .infer import default_onnx_dir

    out = args.out or default_onnx_dir()
    for path in export_onnx(
        out,
        lungs=args.lung_weights,
        diagnosis=args.weights,
        gate=args.gate_weights,
        lesions=args.lesion_weights,
        severity=args.severity_weights,
    ):
        print(f"{path}\t{path.stat().st_size / 1e6:.1f} MB")
    print(f"use with: covidcxr predict --backend onnxruntime --onnx-dir {out} ...")
    return 0


def _cmd_train_gate(args: argparse.Namespace) -> int:
    from .gate import train_gate

    res = train_gate(data_root=args.data_root, out_dir=args.out, export_dir=args.export)
    for split, r in res["results"].items():
        print(
            f"{split:>5}: frontal X-rays refused {r['false_refusal_frontal']:.1%} (n={r['n_frontal']}); lateral/CT refused {r['refusal_lateral_ct']:.1%} (n={r['n_lateral_ct']}); other images refused {r['refusal_non_xray']:.1%}"
        )
    print(f"threshold {res['threshold']:.3f}; weights: {res['spec']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .batch import output_lock

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"need --batch-size >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    # Before the models load (seconds): a bad --out, or another run writing there, is said at once.
    with output_lock(writable_out(args.out)):
        return _predict_locked(args)


def _predict_locked(args: argparse.Namespace) -> int:
    from .batch import RunCounts
    from .infer import Predictor
    from .predict import predict_files

    inputs = args.inputs or ([] if args.csv else [str(SAMPLE)])
    predictor = Predictor.load(
        lungs=args.lung_weights,
        diagnosis=args.weights,
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
    )
    for row in rows:
        if "error" in row:
            tqdm.write(f"error: {row['error']}", file=sys.stderr)
            if row.get("refusal_reason"):
                counts.refused[row["refusal_reason"]] = counts.refused.get(row["refusal_reason"], 0) + 1
            continue
        probs = "  ".join(f"{c} {p:.1%}" for c, p in row["probabilities"].items())
        warn = "".join(f"\n    warning: {w}" for w in row["warnings"])
        tqdm.write(f"{row['path']}\t{row['prediction']}\t[{probs}]{warn}")
    kept = f"; {counts.skipped} already in predictions.jsonl, skipped" if counts.skipped else ""
    if counts.skipped_errors:
        kept += f" ({counts.skipped_errors} of them errors: --retry-errors runs them again)"
    if counts.refused:
        kept = " (refused: " + ", ".join(f"{n} {why}" for why, n in sorted(counts.refused.items())) + ")" + kept
    print(
        f"{counts.done} read, {counts.failed} failed or refused{kept}; results: {Path(args.out) / 'predictions.jsonl'}",
        file=sys.stderr,
    )
    return 2 if counts.failed or counts.skipped_errors else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .web import create_app
    except ImportError as err:
        raise RuntimeError(
            f"covidcxr serve needs the serve extra ({err.name} is missing): pip install 'covidcxr[serve]'"
        ) from err
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    from .io import SERVE_MAX_PIXELS

    args.max_pixels = SERVE_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    for name, value in (
        ("--max-pixels", args.max_pixels),
        ("--max-queue", args.max_queue),
        ("--limit-concurrency", args.limit_concurrency),
        ("--timeout-keep-alive", args.timeout_keep_alive),
        ("--read-timeout", args.read_timeout),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
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


def allowed_hosts(host: str, extra: list[str] | None) -> list[str]:
    """Host names the server answers to: the loopback names, ``--host`` unless a wildcard, and each ``--allowed-host``."""
    from .web.app import LOOPBACK_HOSTS

    names = [*LOOPBACK_HOSTS, *([] if host in ("0.0.0.0", "::", "") else [host]), *(extra or [])]
    return list(dict.fromkeys(n.strip("[]").lower() for n in names))


def _cmd_evaluate_diagnosis(args: argparse.Namespace) -> int:
    from .engine.evaluate_diagnosis import evaluate_diagnosis

    if args.protocol == "loso":
        from .engine.loso import evaluate_loso

        evaluate_loso(data_root=args.data_root, out_dir=args.out)
        print((Path(args.out) / "loso.md").read_text())
        print(f"results: {Path(args.out) / 'loso.json'} and loso.png")
        return 0

    evaluate_diagnosis(
        spec_path=args.weights,
        data_root=args.data_root,
        split=args.split,
        out_dir=args.out,
        limit=args.limit,
        update_spec=args.update_spec,
        saliency=not args.no_saliency,
    )
    print((Path(args.out) / "diagnosis_eval.md").read_text())
    print(f"results: {Path(args.out) / 'diagnosis_eval.json'}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from .engine.evaluate_diagnosis import audit

    summary = audit(
        spec_path=args.weights, data_root=args.data_root, out_dir=args.out, split=args.split, limit=args.limit
    )
    print((Path(args.out) / "audit.md").read_text())
    return 0 if summary else 1


def _print_seg_summary(summary: dict) -> None:
    for source, res in summary["per_source"].items():
        d, h = res["dice"], res["hd95"]
        print(
            f"{source:>20}: Dice {d['value']:.4f} (95% CI {d['ci_low']:.4f}-{d['ci_high']:.4f}, n={d['n']})  HD95 {h['value']:.1f} px"
        )
    for source, res in summary["agreement"].items():
        print(
            f"{source:>20}: Dice {res['dice']['value']:.4f} (agreement with model-generated masks, n={res['dice']['n']})"
        )
    ceiling = summary["human_ceiling"]["all"]["dice"]
    print(f"{'human ceiling':>20}: Dice {ceiling['value']:.4f} (v7labs vs GeneralBlockchain, n={ceiling['n']} images)")


def _cmd_evaluate_segmentation(args: argparse.Namespace) -> int:
    from .engine.evaluate_segmentation import compare_segmentation, evaluate_segmentation

    if args.compare:
        if args.weights or args.update_spec:
            raise ValueError("--compare A B evaluates the two specs it names; drop --weights and --update-spec")
        compare_segmentation(
            *args.compare, data_root=args.data_root, split=args.split, out_dir=args.out, limit=args.limit
        )
        print((Path(args.out) / "comparison.md").read_text())
        print(f"results: {Path(args.out) / 'comparison.json'}")
        return 0
    summary = evaluate_segmentation(
        spec_path=args.weights,
        data_root=args.data_root,
        split=args.split,
        out_dir=args.out,
        update_spec=args.update_spec,
        limit=args.limit,
    )
    _print_seg_summary(summary)
    print(f"results: {Path(args.out) / 'segmentation_eval.json'}")
    return 0


def _cmd_splits(args: argparse.Namespace) -> int:
    from collections import Counter

    from .data import load_records

    records = load_records(args.data_root)
    counts = Counter((r["dataset"], r["split"]) for r in records)
    by_patient: dict[str, set] = {}
    for r in records:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    leaks = [p for p, s in by_patient.items() if len(s) > 1]
    for ds in sorted({d for d, _ in counts}):
        print(f"{ds:>20}: " + "  ".join(f"{s} {counts[(ds, s)]}" for s in ("train", "val", "test")))
    print(f"patients in more than one split: {len(leaks)}")
    return 1 if leaks else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="covidcxr",
        description="Chest X-ray lung segmentation and COVID-19 pneumonia reading (research and teaching; not for clinical decisions).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="lung masks for X-ray files or folders")
    seg.add_argument(
        "inputs",
        nargs="*",
        default=[str(SAMPLE)],
        help="PNG/JPEG/DICOM files or folders (default: the bundled sample X-ray)",
    )
    seg.add_argument("--out", required=True, help="output folder")
    seg.add_argument("--weights", help="weights spec JSON (default: the shipped model)")
    seg.add_argument("--batch-size", type=int, default=8)
    seg.add_argument("--no-postprocess", action="store_true", help="keep the raw thresholded mask")
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=_cmd_segment)

    pred = sub.add_parser("predict", help="the whole pipeline: gate, lungs, diagnosis, severity, Grad-CAM, report")
    pred.add_argument(
        "inputs",
        nargs="*",
        help="PNG/JPEG/DICOM files, folders (searched recursively) or quoted glob patterns ('scans/**/*.dcm') "
        "(default without --csv: the bundled sample X-ray)",
    )
    pred.add_argument(
        "--csv",
        action="append",
        metavar="FILE",
        help="CSV listing inputs: column 'path', else the first column; relative paths are "
        "read from the CSV's folder (repeatable)",
    )
    pred.add_argument(
        "--out",
        required=True,
        help="output folder (predictions.jsonl and per-image files); an existing predictions.jsonl is "
        "appended to and its inputs are skipped",
    )
    pred.add_argument("--weights", help="diagnosis weights spec JSON (default: the shipped model)")
    pred.add_argument("--lung-weights", help="lung-segmentation weights spec JSON (default: the shipped model)")
    pred.add_argument("--gate-weights", help="input-gate weights spec JSON (default: the shipped gate)")
    pred.add_argument("--lesion-weights", help="lesion-decoder weights spec JSON (default: the shipped model)")
    pred.add_argument("--severity-weights", help="severity-head weights spec JSON (default: the shipped model)")
    pred.add_argument("--no-severity", action="store_true", help="skip lesions and severity scores")
    pred.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="run the models on PyTorch (default) or onnxruntime (no PyTorch needed)",
    )
    pred.add_argument(
        "--onnx-dir",
        help="models written by `covidcxr export onnx` (default ~/.cache/covidcxr/onnx); with --backend onnxruntime",
    )
    pred.add_argument(
        "--no-gate", action="store_true", help="read images the gate would refuse (research use; a warning is kept)"
    )
    pred.add_argument("--no-saliency", action="store_true", help="skip Grad-CAM (batch mode)")
    pred.add_argument("--no-report", action="store_true", help="skip the report PNGs (batch mode)")
    pred.add_argument("--batch-size", type=int, default=8, help="images read and run together (default 8)")
    pred.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes decoding images in parallel (default 0: decode between batches)",
    )
    pred.add_argument("--overwrite", action="store_true", help="start predictions.jsonl afresh instead of resuming it")
    pred.add_argument(
        "--retry-errors", action="store_true", help="when resuming, run again the inputs whose row is an error"
    )
    pred.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pred.set_defaults(func=_cmd_predict)

    srv = sub.add_parser(
        "serve", help="web page and REST API (POST /v1/predict) for the whole pipeline; needs the serve extra"
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted; bigger ones get 413")
    srv.add_argument(
        "--max-pixels",
        type=int,
        help="largest image accepted, in pixels, read from its header before decoding; bigger ones "
        "get 413 (default 36,000,000 = 6000x6000: covidcxr.io.SERVE_MAX_PIXELS; predict reads up to 100,000,000)",
    )
    srv.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="requests waiting for the models at most; more get 503 with Retry-After (default 32)",
    )
    srv.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="also answer requests whose Host header names NAME (repeatable; "
        "default: localhost, 127.0.0.1, ::1 and --host); '*' answers any name. Browsers' requests from other sites' pages are "
        "refused whatever the Host",
    )
    srv.add_argument(
        "--limit-concurrency",
        type=int,
        default=128,
        help="open connections at most; more get 503 (uvicorn's limit_concurrency, default 128)",
    )
    srv.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=5,
        help="seconds an idle connection is kept open (uvicorn's timeout_keep_alive, default 5)",
    )
    srv.add_argument(
        "--read-timeout",
        type=float,
        default=20.0,
        help="seconds the server waits for the next part of an upload before it answers 408 (default 20)",
    )
    srv.add_argument(
        "--no-gate", action="store_true", help="read images the gate would refuse (research use; a warning is kept)"
    )
    srv.add_argument("--no-saliency", action="store_true", help="skip Grad-CAM (faster; heatmap is null)")
    srv.add_argument("--no-severity", action="store_true", help="skip lesions and severity scores")
    srv.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="run the models on PyTorch (default) or onnxruntime",
    )
    srv.add_argument("--onnx-dir", help="models written by `covidcxr export onnx` (with --backend onnxruntime)")
    srv.set_defaults(func=_cmd_serve)

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="task", required=True)
    for task, help_, func in (
        ("segmentation", "train the lung-segmentation U-Net (configs/segmentation.yaml)", _cmd_train_segmentation),
        (
            "diagnosis",
            "train the diagnosis classifier on stage-1 lung views (configs/diagnosis.yaml); --set folds=K cross-validates",
            _cmd_train_diagnosis,
        ),
        (
            "severity",
            "train and evaluate the lesion decoder and severity heads (configs/severity.yaml; ~25 min on 2 cores)",
            _cmd_train_severity,
        ),
    ):
        t = train.add_parser(task, help=help_)
        t.add_argument("--config", help=f"YAML config (e.g. configs/{task}.yaml)")
        t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        t.add_argument("--out", help="run folder (config key out_dir)")
        t.add_argument("--data-root", help="folder holding covid-chestxray/, nih-chestxray8/, kermany-pediatric/")
        t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        t.add_argument("--export", help="write the best weights + spec into this folder (default RUN/export)")
        if task == "segmentation":
            t.add_argument(
                "--adversarial",
                action="store_true",
                help="add a PatchGAN discriminator's adversarial loss (pix2pix style; config key "
                "adversarial, weight adv_weight)",
            )
        t.set_defaults(func=func)

    tg = train.add_parser("gate", help="fit the frontal-chest-X-ray input gate on stage-1 features (a few minutes)")
    tg.add_argument("--data-root")
    tg.add_argument("--out", default="runs/gate", help="run folder")
    tg.add_argument("--export", help="write the gate weights + spec into this folder (default RUN/export)")
    tg.set_defaults(func=_cmd_train_gate)

    ev = sub.add_parser("evaluate", help="evaluate a model").add_subparsers(dest="task", required=True)
    for task, help_, func in (
        ("segmentation", "Dice, IoU, HD95 per mask source with bootstrap CIs", _cmd_evaluate_segmentation),
        (
            "diagnosis",
            "AUROC/AUPRC with CIs, operating point, confusion, calibration, saliency in the lungs; per source and pooled",
            _cmd_evaluate_diagnosis,
        ),
    ):
        e = ev.add_parser(task, help=help_)
        e.add_argument("--weights", help=f"{task} weights spec JSON (default: the shipped model)")
        e.add_argument("--data-root")
        e.add_argument("--split", default="test", choices=["train", "val", "test"])
        e.add_argument("--out", default=f"eval/{task}")
        e.add_argument("--limit", type=int, default=0, help="at most this many samples per source (quick checks)")
        e.add_argument("--update-spec", action="store_true", help="write the test metrics into the weights spec")
        if task == "diagnosis":
            e.add_argument("--no-saliency", action="store_true", help="skip Grad-CAM (faster)")
            e.add_argument(
                "--protocol",
                choices=["split", "loso"],
                default="split",
                help="split (default): the shipped model on --split; loso: leave-one-source-out comparison of the stage-2 designs "
                "(each fold trained without one source, scored on it; --weights and --split do not apply)",
            )
        else:
            e.add_argument(
                "--compare",
                nargs=2,
                metavar=("A", "B"),
                help="two lung weights specs on the same images: Dice and HD95 of each "
                "and the paired difference B - A with bootstrap CIs (comparison.md/.json/.png in --out)",
            )
        e.set_defaults(func=func)

    evs = ev.add_parser(
        "severity", help="severity protocol: out-of-fold lesion Dice, repeated 50/50 splits for extent, opacity, Brixia"
    )
    evs.add_argument(
        "--run",
        default="runs/severity",
        help="severity run folder (its config and lesion folds; missing folds are trained)",
    )
    evs.add_argument("--data-root")
    evs.add_argument("--out", default="eval/severity")
    evs.set_defaults(func=_cmd_evaluate_severity)

    evg = ev.add_parser(
        "gate",
        help="input gate: frontal films refused per source and split, lateral/CT refused, Wilson CIs, contact sheet",
    )
    evg.add_argument("--weights", help="gate weights spec JSON (default: the shipped gate)")
    evg.add_argument("--data-root")
    evg.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="all: the three splits, and per-source totals over them",
    )
    evg.add_argument(
        "--source",
        action="append",
        help="only this folder's films (repeatable; photographs and synthetic images left out)",
    )
    evg.add_argument("--out", default="eval/gate")
    evg.set_defaults(func=_cmd_evaluate_gate)

    exp = sub.add_parser("export", help="export models").add_subparsers(dest="format", required=True)
    onx = exp.add_parser("onnx", help="every shipped model as ONNX + spec, for --backend onnxruntime")
    onx.add_argument("--out", help="output folder (default ~/.cache/covidcxr/onnx, or $COVIDCXR_CACHE/onnx)")
    for flag in ("--weights", "--lung-weights", "--gate-weights", "--lesion-weights", "--severity-weights"):
        onx.add_argument(flag, help="weights spec JSON (default: the shipped model)")
    onx.set_defaults(func=_cmd_export_onnx)

    aud = sub.add_parser(
        "audit",
        help="shortcut audit: lungs blacked out, all but the lungs blacked out, source probe, within-source test",
    )
    aud.add_argument("--weights", help="diagnosis weights spec JSON (default: the shipped model)")
    aud.add_argument("--data-root")
    aud.add_argument("--split", default="test", choices=["val", "test"])
    aud.add_argument("--out", default="eval/audit")
    aud.add_argument("--limit", type=int, default=0, help="at most this many images per source (quick checks)")
    aud.set_defaults(func=_cmd_audit)

    st = sub.add_parser(
        "study", help="backbone x input x enhancement comparison with patient-level CV (configs/study.yaml; resumable)"
    )
    st.add_argument("--config", help="YAML config (default: configs/study.yaml's settings built in)")
    st.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. backbones=[resnet18]",
    )
    st.add_argument(
        "--quick", action="store_true", help="every cell on a few images at 64 px: minutes, for CI and a first look"
    )
    st.add_argument(
        "--out", help="study folder (default study/, or study-quick/ with --quick); finished folds are skipped"
    )
    st.add_argument("--data-root")
    st.set_defaults(func=_cmd_study)

    spl = sub.add_parser("splits", help="patient-level split counts and a leakage check")
    spl.add_argument("--data-root")
    spl.set_defaults(func=_cmd_splits)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # A file name that is not UTF-8 is printed with escapes instead of ending the run with UnicodeEncodeError.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, RuntimeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:  # a disk or permission problem met on the way: one line, the traceback with -v
        log.info("details", exc_info=True)
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"error: {where}{err.strerror or err}; check the path and its permissions, and free space on its disk",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
