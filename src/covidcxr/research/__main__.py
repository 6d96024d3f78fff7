"""``python -m covidcxr.research``: the command line of the designs that are not shipped."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..cli.common import UserError
from ..cli.helptext import HelpFormatter, add_data_root
from ..cli.train import command_of, export_dir, train_config
from ..config import load_config


def _train_cnn(args: argparse.Namespace) -> int:
    from ..engine.common import distributed
    from ..engine.common.runs import export_name
    from .cnn_train import DiagTrainConfig, main

    cfg = train_config(args, DiagTrainConfig, Path(args.config or "configs/diagnosis_cnn.yaml"))
    name = export_name(cfg.export_name, cfg.model, cfg.out_dir, cfg.quick)
    export = export_dir(args, cfg.out_dir, [name])
    run = main(cfg, resume=args.resume, export_dir=export, command=command_of(args))
    if distributed.is_main():  # under torchrun, rank 0 alone reports
        print(f"run folder: {run}")
    return 0


def _loso_cnn(args: argparse.Namespace) -> int:
    from .cnn_loso import CnnRecipe, evaluate_cnn_loso

    recipe = CnnRecipe(**(CnnRecipe.QUICK if args.limit else {}))
    out = args.out or "runs/loso-cnn"
    evaluate_cnn_loso(data_root=args.data_root, out_dir=out, recipe=recipe, limit=args.limit)
    print((Path(out) / "loso.md").read_text())
    return 0


def _audit_cnn(args: argparse.Namespace) -> int:
    from .cnn_audit import audit_cnn

    if not args.weights:
        raise UserError("audit-cnn needs the CNN's weights spec: --weights SPEC.json")
    out = args.out or "runs/audit-cnn"
    audit_cnn(args.weights, data_root=args.data_root, out_dir=out, split=args.split, limit=args.limit)
    print((Path(out) / "audit.md").read_text())
    return 0


def _study(args: argparse.Namespace) -> int:
    from .study import QUICK, StudyConfig, run_study

    overrides = [f"{k}={v}" for k, v in QUICK.items()] if args.quick else []
    overrides += [f"out_dir={args.out or ('study-quick' if args.quick else 'study')}"]
    overrides += [f"data_root={args.data_root}"] if args.data_root else []
    summary = run_study(load_config(StudyConfig, args.config, overrides + list(args.set or [])))
    out = Path(summary["out_dir"])
    print(f"{len(summary['cells'])} cells -> {out / 'results.csv'}, {out / 'results.md'}")
    print(
        f"best by internal macro AUROC: {summary['best_internal']}; best by lungs-blacked-out AUROC closest to 0.5: "
        f"{summary['best_shortcut_free']}; best among those not reading outside the lungs: {summary['best_reading_lungs']}"
    )
    return 0 if summary["complete"] else 1


def _adversarial(args: argparse.Namespace) -> int:
    from .adversarial import AdversarialConfig, main

    cfg = train_config(args, AdversarialConfig, Path(args.config or "configs/segmentation.yaml"))
    run = main(cfg, resume=args.resume, export_dir=export_dir(args, cfg.out_dir, ["unet_mobilenetv2-adversarial"]))
    print(f"run folder: {run}")
    return 0


COMMANDS = {
    "train-cnn": (_train_cnn, "train the CNN diagnosis on lung views (configs/diagnosis_cnn.yaml; --set folds=K)"),
    "loso-cnn": (_loso_cnn, "the within-source CNN under leave-one-source-out (--limit N: a smoke run)"),
    "audit-cnn": (_audit_cnn, "shortcut audit of a CNN diagnosis over stored lung views (--weights SPEC)"),
    "study": (_study, "backbone x input x enhancement comparison with patient-level CV (configs/study.yaml)"),
    "adversarial": (_adversarial, "the lung U-Net with a PatchGAN judging (image, mask) pairs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m covidcxr.research", description=__doc__, formatter_class=HelpFormatter
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="COMMAND")
    for name, (func, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
        p.add_argument("--config", metavar="YAML", help="YAML config (default: the design's recipe)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        p.add_argument("--out", metavar="DIR", help="run folder")
        p.add_argument("--resume", action="store_true", help="continue the run in --out")
        p.add_argument("--quick", action="store_true", help="smoke run: a few images, tiny inputs")
        p.add_argument("--export", metavar="DIR", help="weights folder (default RUN/export)")
        p.add_argument("--force", action="store_true", help="allow --export over shipped weights")
        p.add_argument("--limit", type=int, default=0, help="loso-cnn, audit-cnn: images per source (0: all)")
        p.add_argument("--weights", metavar="SPEC", help="audit-cnn: the CNN diagnosis's weights spec (JSON)")
        p.add_argument("--split", default="test", help="audit-cnn: the split audited (default: test)")
        add_data_root(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # research runs say what they export
    try:
        return args.func(args)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
