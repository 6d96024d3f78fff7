"""``covidcxr train segmentation|diagnosis|severity|gate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UserError
from .evaluate import print_seg_summary


def train_config(args: argparse.Namespace, cls):
    """Config of a training command: defaults, then --config (or a resumed run's own), then --set."""
    from ..config import load_config

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.data_root:
        overrides.append(f"data_root={args.data_root}")
    config = args.config
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out RUN_DIR, the run folder to continue")
        if config is None and (Path(args.out) / "config.yaml").is_file():
            config = Path(args.out) / "config.yaml"  # the killed run's own resolved config
    return load_config(cls, config, overrides)


def cmd_train_segmentation(args: argparse.Namespace) -> int:
    from ..engine import distributed
    from ..engine.segmentation import SegTrainConfig, main

    if args.adversarial:  # the flag is the config key, set last
        args.set = [*(args.set or []), "adversarial=true"]
    cfg = train_config(args, SegTrainConfig)
    run = main(cfg, resume=args.resume, export_dir=args.export)
    if not distributed.is_main():  # under torchrun, rank 0 alone evaluates and writes
        return 0
    print(f"run folder: {run}")
    if args.export:
        # Shipping weights: record their test-split metrics in the spec they travel with.
        from ..engine.evaluate_segmentation import evaluate_segmentation

        spec = Path(args.export) / f"{cfg.export_name}.json"
        summary = evaluate_segmentation(
            spec_path=spec, data_root=cfg.data_root, split="test", out_dir=run / "eval", update_spec=True
        )
        print_seg_summary(summary)
        print(f"weights: {spec}")
    return 0


def is_heads_config(path: str | None) -> bool:
    """A diagnosis config naming a ``design`` is the source-blind heads recipe; otherwise the CNN's."""
    import yaml

    return bool(path) and "design" in (yaml.safe_load(Path(path).read_text()) or {})


def cmd_train_diagnosis(args: argparse.Namespace) -> int:
    from ..engine import distributed
    from ..engine.diagnosis import DiagTrainConfig, main

    if is_heads_config(args.config) or any(o.startswith("design=") for o in args.set or []):
        from ..engine.train_heads import HeadsConfig, train_heads

        cfg = train_config(args, HeadsConfig)
        summary = train_heads(cfg, export_dir=args.export)
        print(
            f"run folder: {cfg.out_dir}\nweights: {summary['spec']}\ninternal test macro AUROC: {summary['internal_test']['macro_auroc_ci']['value']:.3f}"
        )
        if "loso" in summary:
            print((Path(cfg.out_dir) / "loso" / "loso.md").read_text())
        return 0
    cfg = train_config(args, DiagTrainConfig)
    run = main(cfg, resume=args.resume, export_dir=args.export)
    if not distributed.is_main():
        return 0
    print(f"run folder: {run}")
    if args.export and cfg.folds <= 1:
        print(f"weights: {Path(args.export) / (cfg.export_name + '.json')}")
    return 0


def cmd_train_severity(args: argparse.Namespace) -> int:
    from ..engine.severity import SeverityConfig, main

    cfg = train_config(args, SeverityConfig)
    run = main(cfg, cfg.out_dir, resume=args.resume, export_dir=args.export)
    print((run / "severity_eval.md").read_text())
    print(f"run folder: {run}")
    if args.export:
        print(
            f"weights: {Path(args.export) / 'unet_mobilenetv2_lesions.json'}, {Path(args.export) / 'severity_linear.json'}"
        )
    return 0


def cmd_train_gate(args: argparse.Namespace) -> int:
    from ..engine.gate import train_gate

    res = train_gate(data_root=args.data_root, out_dir=args.out, export_dir=args.export)
    for split, r in res["results"].items():
        print(
            f"{split:>5}: frontal X-rays refused {r['false_refusal_frontal']:.1%} (n={r['n_frontal']}); lateral/CT refused {r['refusal_lateral_ct']:.1%} (n={r['n_lateral_ct']}); other images refused {r['refusal_non_xray']:.1%}"
        )
    print(f"threshold {res['threshold']:.3f}; weights: {res['spec']}")
    return 0
