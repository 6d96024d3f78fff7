"""The ``covidcxr`` argument parser: one ``add_<command>`` function per subcommand."""

from __future__ import annotations

import argparse

from .common import SAMPLE
from .dicom import cmd_dicom_node
from .evaluate import (
    cmd_audit,
    cmd_export_onnx,
    cmd_splits,
)
from .helptext import ONNX_DIR_HELP, SHIPPED, HelpFormatter, add_data_root, add_weights, command, examples
from .inference import cmd_predict, cmd_segment, cmd_serve
from .parser_evaluate import add_evaluate_tasks
from .train import cmd_train_diagnosis, cmd_train_gate, cmd_train_segmentation, cmd_train_severity

BACKENDS = ["auto", "torch", "onnxruntime"]
BACKEND_HELP = (
    "where the models run: auto (default) is torch where PyTorch is installed (the train extra), else onnxruntime "
    "on the ONNX graphs shipped in the package (no PyTorch needed)"
)
NO_GATE_HELP = "read images the gate would refuse (research use; a warning is kept)"


def package_version() -> str:
    """The installed distribution's version, else the source tree's (``covidcxr.__version__``)."""
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="covidcxr",
        description="Chest X-ray lung segmentation and COVID-19 pneumonia reading (research and teaching; not for clinical decisions).",
        epilog=examples(
            "covidcxr predict scans/ --out out/",
            "covidcxr segment chest.dcm --out masks/",
            "covidcxr serve --port 8000",
            "covidcxr evaluate diagnosis --split test --out eval/diagnosis",
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more, and show the traceback of an error")
    p.add_argument("--version", action="version", version=f"covidcxr {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_segment, add_predict, add_serve, add_dicom_node, add_train, add_evaluate, add_export, add_audit):
        add(sub)
    add_splits(sub)
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, except that an unknown option is refused with the usage of the command it was given to.

    ``covidcxr predict --fast`` then prints ``predict``'s usage and options, not the list of commands.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser that ``args`` were parsed by: ``covidcxr``, ``predict``, ``train diagnosis`` ..."""
    while parser._subparsers is not None:
        action = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
        chosen = getattr(args, action.dest, None)
        if chosen not in action.choices:
            break
        parser = action.choices[chosen]
    return parser


def add_segment(sub) -> None:
    seg = command(
        sub,
        "segment",
        "lung masks for X-ray files or folders",
        "covidcxr segment --out masks/    # the bundled sample X-ray",
        "covidcxr segment scans/ chest.dcm --out masks/ --batch-size 4",
        "covidcxr segment scans/ --out masks/ --lung-weights runs/segmentation/export/unet_mobilenetv2_lungs.json",
    )
    seg.add_argument(
        "inputs",
        nargs="*",
        default=[str(SAMPLE)],
        help="PNG/JPEG/DICOM files or folders (default: the bundled sample X-ray)",
    )
    seg.add_argument(
        "--out", required=True, help="output folder: <name>_lungs.png and <name>_overlay.png for each input"
    )
    add_weights(seg, "--lung-weights", f"lung-segmentation weights spec JSON {SHIPPED}", was_weights=True)
    seg.add_argument("--batch-size", type=int, default=8, help="images read and segmented together")
    seg.add_argument("--no-postprocess", action="store_true", help="keep the raw thresholded mask")
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)


def add_predict(sub) -> None:
    pred = command(
        sub,
        "predict",
        "the whole pipeline: gate, lungs, diagnosis, severity, Grad-CAM, report",
        "covidcxr predict --out out/    # the bundled sample X-ray",
        "covidcxr predict scans/ 'more/**/*.dcm' --csv list.csv --out out/ --workers 2",
        "covidcxr predict scans/ --out out/ --backend onnxruntime --no-saliency --no-report",
        "covidcxr predict scans/ --out out/ --retry-errors    # resume, and run the failed inputs again",
    )
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
        "read from the CSV's folder (repeatable; default: none)",
    )
    pred.add_argument(
        "--out",
        required=True,
        help="output folder (predictions.jsonl and per-image files); an existing predictions.jsonl is "
        "appended to and its inputs are skipped",
    )
    add_weights(pred, "--diagnosis-weights", f"diagnosis weights spec JSON {SHIPPED}", was_weights=True)
    add_weights(pred, "--lung-weights", f"lung-segmentation weights spec JSON {SHIPPED}")
    add_weights(pred, "--gate-weights", "input-gate weights spec JSON (default: the shipped gate)")
    add_weights(pred, "--lesion-weights", f"lesion-decoder weights spec JSON {SHIPPED}")
    add_weights(pred, "--severity-weights", f"severity-head weights spec JSON {SHIPPED}")
    pred.add_argument("--no-severity", action="store_true", help="skip lesions and severity scores")
    pred.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    pred.add_argument(
        "--onnx-dir",
        metavar="DIR",
        help=ONNX_DIR_HELP,
    )
    pred.add_argument("--no-gate", action="store_true", help=NO_GATE_HELP)
    pred.add_argument("--no-saliency", action="store_true", help="skip Grad-CAM (batch mode)")
    pred.add_argument("--no-report", action="store_true", help="skip the report PNGs (batch mode)")
    pred.add_argument("--batch-size", type=int, default=8, help="images read and run together")
    pred.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes decoding images in parallel (default 0: decode between batches)",
    )
    pred.add_argument("--overwrite", action="store_true", help="start predictions.jsonl afresh instead of resuming it")
    add_engine(pred)
    pred.add_argument(
        "--retry-errors", action="store_true", help="when resuming, run again the inputs whose row is an error"
    )
    pred.add_argument(
        "--dicom-out",
        action="store_true",
        help="for DICOM inputs also write <name>_seg.dcm (lung and lesion masks), <name>_sr.dcm (the reading) and "
        "<name>_sc.dcm (the report picture) into the source's study; research use (needs the dicom extra)",
    )
    pred.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pred.set_defaults(func=cmd_predict)


def add_engine(pred) -> None:
    """``predict``'s engine options: the local batch, or Ray Data actors (the ray extra)."""
    pred.add_argument(
        "--engine",
        default="local",
        choices=["local", "ray"],
        help="local: this process reads the batches (default); ray: a pool of Ray Data actors, each with its own "
        "models, on this machine or a cluster (pip install 'covidcxr[ray]')",
    )
    pred.add_argument(
        "--address",
        metavar="ADDR",
        help="--engine ray: join the Ray cluster at ADDR (printed by `ray start --head`; 'auto': the one on this "
        "machine); default: start a private one on this machine for the run",
    )
    pred.add_argument(
        "--num-workers",
        type=int,
        metavar="N",
        help="--engine ray: actors, each loading the models once (default: one per CPU of the cluster, "
        "or per --gpus-per-worker GPUs)",
    )
    pred.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="--engine ray: GPUs each actor asks for; its models then run on one (torch backend; default 0: CPU)",
    )
    pred.add_argument(
        "--parquet",
        action="store_true",
        help="also write predictions.parquet, a copy of every row of predictions.jsonl (needs pyarrow: the ray extra)",
    )


def add_serve(sub) -> None:
    srv = command(
        sub,
        "serve",
        "web page and REST API (POST /v1/predict) for the whole pipeline",
        "covidcxr serve    # http://127.0.0.1:8000/",
        "covidcxr serve --host 0.0.0.0 --port 8080 --allowed-host cxr.example.org",
        "covidcxr serve --backend onnxruntime --no-saliency --max-upload-mb 10",
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    srv.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest upload accepted, in MiB; bigger ones get 413"
    )
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
        help="requests waiting for the models at most; more get 503 with Retry-After",
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
        help="open connections at most; more get 503 (uvicorn's limit_concurrency)",
    )
    srv.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=5,
        help="seconds an idle connection is kept open (uvicorn's timeout_keep_alive)",
    )
    srv.add_argument(
        "--read-timeout",
        type=float,
        default=20.0,
        help="seconds the server waits for the next part of an upload before it answers 408",
    )
    srv.add_argument(
        "--upload-timeout",
        type=float,
        default=60.0,
        help="seconds a whole upload may take before the server answers 408, however steadily it arrives",
    )
    srv.add_argument("--no-gate", action="store_true", help=NO_GATE_HELP)
    srv.add_argument("--no-saliency", action="store_true", help="skip Grad-CAM (faster; heatmap is null)")
    srv.add_argument("--no-severity", action="store_true", help="skip lesions and severity scores")
    srv.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    srv.add_argument(
        "--onnx-dir",
        metavar="DIR",
        help=ONNX_DIR_HELP,
    )
    srv.set_defaults(func=cmd_serve)


def add_dicom_node(sub) -> None:
    node = command(
        sub,
        "dicom-node",
        "a DICOM node (C-STORE, C-ECHO) a PACS sends chest X-rays to; SEG, SR and report sent back (dicom extra)",
        "covidcxr dicom-node --ae-title COVIDCXR --port 11112 --forward 127.0.0.1:4242:ORTHANC",
        "covidcxr dicom-node --host 0.0.0.0 --forward pacs.example.org:104:PACS --out dicom-results/",
    )
    node.add_argument("--ae-title", default="COVIDCXR", help="this node's AE title (1-16 characters)")
    node.add_argument("--port", type=int, default=11112, help="TCP port to listen on")
    node.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    node.add_argument(
        "--forward",
        metavar="HOST:PORT:AET",
        help="C-STORE each reading's SEG, SR and report there (the sender's archive; default: nowhere)",
    )
    node.add_argument(
        "--out", metavar="DIR", help="also write the results and a predictions.jsonl row per image here (default: none)"
    )
    node.add_argument(
        "--max-queue",
        type=int,
        default=4,
        help="objects received and waiting for the models at most; more wait in their C-STORE",
    )
    node.add_argument("--no-report", action="store_true", help="send no report picture (secondary capture)")
    node.add_argument("--no-gate", action="store_true", help=NO_GATE_HELP)
    node.add_argument(
        "--backend", default="torch", choices=BACKENDS, help="run the models on PyTorch (default) or onnxruntime"
    )
    node.add_argument("--onnx-dir", metavar="DIR", help=ONNX_DIR_HELP)
    node.set_defaults(func=cmd_dicom_node)


TRAIN_TASKS = {
    "segmentation": (
        "train the lung-segmentation U-Net (default config: the shipped configs/segmentation.yaml)",
        cmd_train_segmentation,
        (
            "covidcxr train segmentation --out runs/segmentation",
            "covidcxr train segmentation --out runs/segmentation --resume",
            "covidcxr train segmentation --quick",
            "covidcxr train segmentation --out runs/seg-v1 --export src/covidcxr/weights --force",
        ),
    ),
    "diagnosis": (
        "train the source-blind diagnosis heads (default config: the shipped configs/diagnosis.yaml; the CNN "
        "designs that were not shipped: python -m covidcxr.research train-cnn)",
        cmd_train_diagnosis,
        (
            "covidcxr train diagnosis --out runs/diagnosis",
            "covidcxr train diagnosis --quick",
        ),
    ),
    "severity": (
        "train and evaluate the lesion decoder and severity heads (default config: the shipped "
        "configs/severity.yaml; ~25 min on 2 cores)",
        cmd_train_severity,
        (
            "covidcxr train severity --out runs/severity",
            "covidcxr train severity --out runs/severity --resume",
            "covidcxr train severity --quick",
        ),
    ),
}

QUICK_HELP = (
    "smoke run: a few dozen images, tiny inputs, one epoch; the same kinds of files in the run folder "
    "(default RUN runs/<task>-quick), each marked smoke, the model named <name>-quick"
)
FORCE_HELP = (
    "allow --export into the package's weights folder or over a shipped model's spec (reproducing the shipped files)"
)


def add_train(sub) -> None:
    train = command(
        sub,
        "train",
        "train a model",
        "covidcxr train segmentation --out runs/segmentation",
        "covidcxr train diagnosis --quick",
        "covidcxr train gate --out runs/gate",
    ).add_subparsers(dest="task", required=True)
    for task, (summary, func, lines) in TRAIN_TASKS.items():
        t = command(train, task, summary, *lines)
        t.add_argument(
            "--config",
            metavar="YAML",
            help=f"YAML config (default: the shipped configs/{task}.yaml, or with --resume the run's own config.yaml)",
        )
        t.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, after --config and --quick (repeatable; default: none)",
        )
        t.add_argument("--out", metavar="RUN", help="run folder (config key out_dir; default: the config's out_dir)")
        add_data_root(t)
        t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        t.add_argument(
            "--export", metavar="DIR", help="write the best weights + spec into this folder (default RUN/export)"
        )
        t.add_argument("--force", action="store_true", help=FORCE_HELP)
        t.add_argument("--quick", action="store_true", help=QUICK_HELP)
        t.set_defaults(func=func)
    add_train_gate(train)


def add_train_gate(train) -> None:
    tg = command(
        train,
        "gate",
        "fit the frontal-chest-X-ray input gate on stage-1 features (a few minutes)",
        "covidcxr train gate --out runs/gate",
        "covidcxr train gate --quick",
        "covidcxr train gate --data-root /data/cxr --out runs/gate --export runs/gate/export",
    )
    add_data_root(tg)
    tg.add_argument("--out", metavar="RUN", help="run folder (default runs/gate; with --quick runs/gate-quick)")
    tg.add_argument(
        "--export", metavar="DIR", help="write the gate weights + spec into this folder (default RUN/export)"
    )
    tg.add_argument("--force", action="store_true", help=FORCE_HELP)
    tg.add_argument("--quick", action="store_true", help=QUICK_HELP)
    tg.set_defaults(func=cmd_train_gate)


def add_evaluate(sub) -> None:
    ev = command(
        sub,
        "evaluate",
        "evaluate a model",
        "covidcxr evaluate segmentation --split test --out eval/segmentation",
        "covidcxr evaluate diagnosis --protocol loso --out eval/loso",
        "covidcxr evaluate gate --split all --out eval/gate",
    ).add_subparsers(dest="task", required=True)
    add_evaluate_tasks(ev)


def add_export(sub) -> None:
    exp = command(
        sub,
        "export",
        "export models",
        "covidcxr export onnx",
        "covidcxr export onnx --out onnx/ --diagnosis-weights runs/diagnosis/export/source_blind_diagnosis.json",
    ).add_subparsers(dest="format", required=True)
    onx = command(
        exp,
        "onnx",
        "every shipped model as ONNX + spec, for --backend onnxruntime",
        "covidcxr export onnx    # into ~/.cache/covidcxr/onnx",
        "covidcxr export onnx --shipped --force    # renew the graphs shipped in the package after its weights changed",
        "covidcxr export onnx --out onnx/ && covidcxr predict --backend onnxruntime --onnx-dir onnx/ --out out/",
        "covidcxr export onnx --out onnx/ --lung-weights runs/segmentation/export/unet_mobilenetv2_lungs.json",
    )
    onx.add_argument(
        "--out", metavar="DIR", help="output folder (default ~/.cache/covidcxr/onnx, or $COVIDCXR_CACHE/onnx)"
    )
    onx.add_argument(
        "--shipped",
        action="store_true",
        help="write the shipped weights' graphs into the package (src/covidcxr/weights/onnx/), what the "
        "onnxruntime backend runs by default; with --force to replace the graphs there",
    )
    onx.add_argument("--force", action="store_true", help="replace the shipped graphs (with --shipped)")
    add_weights(onx, "--diagnosis-weights", f"diagnosis weights spec JSON {SHIPPED}", was_weights=True)
    add_weights(onx, "--lung-weights", f"lung-segmentation weights spec JSON {SHIPPED}")
    add_weights(onx, "--gate-weights", "input-gate weights spec JSON (default: the shipped gate)")
    add_weights(onx, "--lesion-weights", f"lesion-decoder weights spec JSON {SHIPPED}")
    add_weights(onx, "--severity-weights", f"severity-head weights spec JSON {SHIPPED}")
    onx.set_defaults(func=cmd_export_onnx)


def add_audit(sub) -> None:
    aud = command(
        sub,
        "audit",
        "shortcut audit: lungs blacked out, all but the lungs blacked out, source probe, within-source test",
        "covidcxr audit --split test --out eval/audit",
        "covidcxr audit --limit 20 --out eval/audit-quick    # a quick look",
        "covidcxr audit --diagnosis-weights runs/diagnosis/export/source_blind_diagnosis.json --out eval/audit-run",
    )
    add_weights(aud, "--diagnosis-weights", f"diagnosis weights spec JSON {SHIPPED}", was_weights=True)
    add_data_root(aud)
    aud.add_argument("--split", default="test", choices=["val", "test"], help="patient-level split to audit on")
    aud.add_argument("--out", default="eval/audit", metavar="DIR", help="output folder (audit.md and its figures)")
    aud.add_argument("--limit", type=int, default=0, help="at most this many images per source (quick checks; 0: all)")
    aud.set_defaults(func=cmd_audit)


def add_splits(sub) -> None:
    spl = command(
        sub,
        "splits",
        "patient-level split counts and a leakage check",
        "covidcxr splits",
        "covidcxr splits --data-root /data/cxr",
    )
    add_data_root(spl)
    spl.set_defaults(func=cmd_splits)
