"""``covidcxr train segmentation|diagnosis|severity|gate``.

Without ``--config`` a task trains its shipped recipe (``covidcxr/configs/<task>.yaml``, the same
files as ``configs/`` in the repository); with ``--resume`` and no ``--config`` the run's own
``config.yaml``. ``--quick`` is a smoke run (a few dozen images, one epoch; every file marked
``smoke``). Exports go to ``RUN/export`` unless ``--export DIR``; the package's weights folder
and the specs of shipped models elsewhere need ``--force`` (docs/training.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .common import UserError
from .evaluate import print_seg_summary
from .smoke import SMOKE_BANNER, mark_smoke_run


def command_of(args: argparse.Namespace) -> str:
    """The command line of this run: the process's own when it is ``covidcxr train``, else rebuilt from ``args``."""
    argv = sys.argv[1:]
    started_here = Path(sys.argv[0]).name == "covidcxr" or sys.argv[0].endswith("cli/__main__.py")
    if started_here and "train" in argv and argv[argv.index("train") + 1 : argv.index("train") + 2] == [args.task]:
        return shlex.join(["covidcxr", *argv])
    words = ["covidcxr", "train", args.task]
    for flag, key in (("--config", "config"), ("--data-root", "data_root"), ("--out", "out"), ("--export", "export")):
        if getattr(args, key, None):
            words += [flag, str(getattr(args, key))]
    for item in getattr(args, "set", None) or []:
        words += ["--set", item]
    for flag in ("resume", "quick", "force"):
        if getattr(args, flag, False):
            words.append(f"--{flag}")
    return shlex.join(words)


def config_path(args: argparse.Namespace) -> Path:
    """The YAML a training command reads: --config, else a resumed run's own config.yaml, else the shipped recipe."""
    from ..config import default_config_path

    if args.config is not None:
        return Path(args.config)
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out RUN_DIR, the run folder to continue")
        if (Path(args.out) / "config.yaml").is_file():
            return Path(args.out) / "config.yaml"  # the killed run's own resolved config
    return default_config_path(args.task)


def train_config(args: argparse.Namespace, cls, path: Path | None = None):
    """Config of a training command: defaults, the YAML (:func:`config_path`), --quick, --out/--data-root, then --set."""
    from ..config import load_config

    if args.resume and not args.out:
        raise UserError("--resume needs --out RUN_DIR, the run folder to continue")
    overrides = []
    if getattr(args, "quick", False):
        overrides += [f"{k}={v}" for k, v in cls.QUICK.items()] + ["quick=true"]
        if not args.out:
            overrides.append(f"out_dir=runs/{args.task}-quick")
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.data_root:
        overrides.append(f"data_root={args.data_root}")
    overrides += list(args.set or [])
    return load_config(cls, path or config_path(args), overrides)


def export_dir(args: argparse.Namespace, run: str | Path, names: list[str]) -> Path:
    """Where the weights go (``--export`` or ``RUN/export``), refused into the package's weights or over a
    shipped model's spec elsewhere unless ``--force``."""
    from ..engine.common.runs import check_export

    target = Path(args.export) if args.export else Path(run) / "export"
    try:
        return check_export(target, names, run, force=getattr(args, "force", False))
    except ValueError as err:
        raise UserError(str(err)) from None


def cmd_train_segmentation(args: argparse.Namespace) -> int:
    from ..engine.common import distributed
    from ..engine.common.runs import export_name, recorded_command
    from ..engine.lungs.train import SegTrainConfig, main

    cfg = train_config(args, SegTrainConfig)
    name = export_name(cfg.export_name, cfg.model, cfg.out_dir, cfg.quick)
    export = export_dir(args, cfg.out_dir, [name])
    with recorded_command(command_of(args)):  # the spec's command line (main's signature stays as callers know it)
        run = main(cfg, resume=args.resume, export_dir=export)
    if not distributed.is_main():  # under torchrun, rank 0 alone evaluates and writes
        return 0
    print(f"run folder: {run}")
    spec = export / f"{name}.json"
    if not spec.is_file():  # a trainer that exported nothing (a stand-in in tests)
        return 0
    # The exported weights' validation metrics go into the spec they travel with, --export or not. The
    # test split is read only on request, once a candidate is chosen:
    # covidcxr evaluate segmentation --lung-weights SPEC --split test --update-spec
    from ..engine.lungs.evaluate import evaluate_segmentation

    summary = evaluate_segmentation(
        spec_path=spec,
        data_root=cfg.data_root,
        split="val",
        out_dir=run / "eval",
        update_spec=True,
        limit=max(cfg.limit // 4, 2) if cfg.limit else 0,  # a run on a few images: a look at a few of them
        smoke=cfg.quick,
    )
    print_seg_summary(summary)
    print(f"weights: {spec}")
    return 0


def cmd_train_diagnosis(args: argparse.Namespace) -> int:
    from ..engine.common.runs import export_name
    from ..engine.diagnosis.train import MODEL, HeadsConfig, train_heads

    cfg = train_config(args, HeadsConfig)
    export = export_dir(args, cfg.out_dir, [export_name(cfg.export_name, MODEL, cfg.out_dir, cfg.quick)])
    summary = train_heads(cfg, export_dir=export, command=command_of(args))
    if cfg.quick:  # before its numbers, and into every file it wrote
        mark_smoke_run(cfg.out_dir, export)
        print(SMOKE_BANNER)
    print(
        f"run folder: {cfg.out_dir}\nweights: {summary['spec']}\ninternal test macro AUROC: {summary['internal_test']['macro_auroc_ci']['value']:.3f}"
    )
    if "loso" in summary:
        print((Path(cfg.out_dir) / "loso" / "loso.md").read_text())
    if cfg.quick:
        print(SMOKE_BANNER)
    return 0


def cmd_train_severity(args: argparse.Namespace) -> int:
    from ..engine.severity.train import SeverityConfig, export_names, main

    cfg = train_config(args, SeverityConfig)
    names = export_names(cfg)
    export = export_dir(args, cfg.out_dir, list(names))
    run = main(cfg, cfg.out_dir, resume=args.resume, export_dir=export, command=command_of(args))
    print((run / "severity_eval.md").read_text())
    print(f"run folder: {run}")
    print(f"weights: {', '.join(str(export / (n + '.json')) for n in names)}")
    return 0


def cmd_train_gate(args: argparse.Namespace) -> int:
    from ..engine.common.runs import export_name
    from ..engine.gate.train import GATE_NAME, QUICK_LIMIT, train_gate

    quick = getattr(args, "quick", False)
    out = args.out or ("runs/gate-quick" if quick else "runs/gate")
    export = export_dir(args, out, [export_name(GATE_NAME, GATE_NAME, out, quick)])
    res = train_gate(
        data_root=args.data_root,
        out_dir=out,
        export_dir=export,
        limit=QUICK_LIMIT if quick else 0,
        quick=quick,
        command=command_of(args),
    )
    for split, r in res["results"].items():
        print(
            f"{split:>5}: frontal X-rays refused {r['false_refusal_frontal']:.1%} (n={r['n_frontal']}); lateral/CT refused {r['refusal_lateral_ct']:.1%} (n={r['n_lateral_ct']}); other images refused {r['refusal_non_xray']:.1%}"
        )
    print(f"threshold {res['threshold']:.3f}; weights: {res['spec']}")
    return 0
