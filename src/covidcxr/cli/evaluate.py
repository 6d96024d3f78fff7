"""``covidcxr evaluate ...``, ``audit``, ``export onnx``, ``study`` and ``splits``: measuring and shipping models."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UserError


def print_seg_summary(summary: dict) -> None:
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


def cmd_evaluate_segmentation(args: argparse.Namespace) -> int:
    from ..engine.lungs.evaluate import compare_segmentation, evaluate_segmentation

    if args.compare:
        if args.lung_weights or args.update_spec:
            raise UserError("--compare A B evaluates the two specs it names; drop --lung-weights and --update-spec")
        compare_segmentation(
            *args.compare, data_root=args.data_root, split=args.split, out_dir=args.out, limit=args.limit
        )
        print((Path(args.out) / "comparison.md").read_text())
        print(f"results: {Path(args.out) / 'comparison.json'}")
        return 0
    summary = evaluate_segmentation(
        spec_path=args.lung_weights,
        data_root=args.data_root,
        split=args.split,
        out_dir=args.out,
        update_spec=args.update_spec,
        limit=args.limit,
        stress=args.stress,
        sheet=args.sheet,
    )
    print_seg_summary(summary)
    if args.stress:
        print((Path(args.out) / "stress.md").read_text())
    if args.sheet:
        print(f"contact sheet: {summary['sheet']}")
    print(f"results: {Path(args.out) / 'segmentation_eval.json'}")
    return 0


def cmd_evaluate_diagnosis(args: argparse.Namespace) -> int:
    from ..engine.diagnosis.evaluate import evaluate_diagnosis

    if args.protocol == "loso":
        from ..engine.diagnosis.loso import evaluate_loso

        evaluate_loso(data_root=args.data_root, out_dir=args.out)
    if args.protocol == "loso":
        print((Path(args.out) / "loso.md").read_text())
        print(f"results: {Path(args.out) / 'loso.json'} and loso.png")
        return 0

    evaluate_diagnosis(
        spec_path=args.diagnosis_weights,
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


def cmd_evaluate_severity(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.severity.train import SeverityConfig, evaluate_severity

    run = Path(args.run)
    config = run / "config.yaml" if (run / "config.yaml").is_file() else None
    cfg = load_config(SeverityConfig, config, [f"data_root={args.data_root}"] if args.data_root else None)
    evaluate_severity(cfg, run, args.out)
    print((Path(args.out) / "severity_eval.md").read_text())
    print(f"results: {Path(args.out) / 'severity_eval.json'}")
    return 0


def cmd_evaluate_uncertainty(args: argparse.Namespace) -> int:
    from ..engine.diagnosis.uncertainty import evaluate

    report = evaluate(args.data_root, args.out, args.spec, loso=not args.no_loso, limit=args.limit)
    print(headline_summary(report))
    print(
        f"report: {Path(args.out) / 'headline.json'}"
        + (
            f"; operating point and thresholds written into {args.spec} (and its ONNX export's spec)"
            if args.spec
            else ""
        )
    )
    return 0


def headline_summary(report: dict) -> str:
    """The numbers of ``covidcxr evaluate uncertainty`` in lines a person reads."""
    op, u, v = report["operating_point"], report["uncertainty"], report["validation"]
    per = report["validation_per_source"]
    lines = [
        f"operating point: disease when P(abnormal) >= {op['p_abnormal']:.4f}; "
        f"COVID-19 when P(COVID-19 | abnormal) >= {op['covid_given_abnormal']} (near chance)",
        f"validation: sensitivity {op['validation']['sensitivity']:.3f}, specificity "
        f"{op['validation']['specificity']:.3f} (sources weighted equally)",
        "  sensitivity per source: " + ", ".join(f"{k} {x:.3f}" for k, x in per["sensitivity"].items()),
        "  specificity per source: " + ", ".join(f"{k} {x:.3f}" for k, x in per["specificity"].items()),
        f"uncertain: {v['uncertain']} of {v['n']} ({1 - v['certain_share']:.1%}); readings left certain "
        f"{v['certain_share']:.1%}, right {v['right_certain']}; all readings right {v['right_all']}; "
        f"margin {u['operating_margin']} logit, goal {'reached' if u['goal_reached'] else 'NOT reached'}",
        "  by reason: " + ", ".join(f"{k} {n}" for k, n in v["by_reason"].items()),
        f"  the disease / No finding call alone (reported, not fitted): right {v['right_certain_disease_call']} "
        f"of the certain readings, {v['right_uncertain_disease_call']} of the uncertain",
    ]
    loso = report.get("loso", {"folds": {}})
    for fold, r in loso["folds"].items():
        for src, s in r["sources"].items():
            rates = [
                f"{label} {s[key]:.3f} (n={s[n]})"
                for key, n, label in (
                    ("covid_read_as_disease", "n_covid", "COVID-19 read as disease"),
                    ("other_read_as_disease", "n_other", "other pneumonia read as disease"),
                    ("normal_read_as_no_finding", "n_normal", "normal read as No finding"),
                    ("covid_read_as_covid", "n_covid", "COVID-19 read as COVID-19"),
                )
                if key in s
            ]
            cats = ", ".join(f"{c} {x:.0%}" for c, x in s.get("categories", {}).items())
            lines.append(f"LOSO [{fold}] {src} at {r['threshold']:.4f}: " + "; ".join(rates) + f"; categories {cats}")
    if "pooled" in loso and "covid_share_by_category" in loso["pooled"]:
        shares = loso["pooled"]["covid_share_by_category"]
        lines.append(
            "LOSO, every film once: COVID-19 share per category: "
            + ", ".join(f"{c} {v['covid']:.0%} (n={v['n']})" for c, v in shares.items())
        )
    return "\n".join(lines)


def cmd_evaluate_gate(args: argparse.Namespace) -> int:
    from ..engine.gate.train import evaluate_gate

    splits = ("train", "val", "test") if args.split == "all" else (args.split,)
    res = evaluate_gate(
        spec_path=args.gate_weights, data_root=args.data_root, splits=splits, sources=args.source, out_dir=args.out
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


def cmd_audit(args: argparse.Namespace) -> int:
    from ..engine.diagnosis.audit import audit

    summary = audit(
        spec_path=args.diagnosis_weights, data_root=args.data_root, out_dir=args.out, split=args.split, limit=args.limit
    )
    print((Path(args.out) / "audit.md").read_text())
    return 0 if summary else 1


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..infer import default_onnx_dir
    from ..specs import SHIPPED_ONNX_DIR

    if args.shipped and args.out:
        raise UserError(f"--shipped writes into the package ({SHIPPED_ONNX_DIR}); drop --out, or drop --shipped")
    custom = [args.lung_weights, args.diagnosis_weights, args.gate_weights, args.lesion_weights, args.severity_weights]
    if args.shipped and any(custom):
        raise UserError(
            "--shipped exports the shipped weights; drop the --*-weights options, or export them with --out DIR"
        )
    try:
        from ..export import check_shipped_target, export_onnx
    except ImportError as err:
        raise RuntimeError(
            f"covidcxr export onnx needs the train extra ({err.name} is missing): pip install 'covidcxr[train]'"
        ) from err
    out = check_shipped_target(SHIPPED_ONNX_DIR if args.shipped else (args.out or default_onnx_dir()), args.force)
    for path in export_onnx(
        out,
        lungs=args.lung_weights,
        diagnosis=args.diagnosis_weights,
        gate=args.gate_weights,
        lesions=args.lesion_weights,
        severity=args.severity_weights,
    ):
        print(f"{path}\t{path.stat().st_size / 1e6:.1f} MB")
    if out.resolve() == SHIPPED_ONNX_DIR.resolve():
        print(
            "the shipped graphs are renewed: `covidcxr predict` runs them when PyTorch is absent (--backend onnxruntime)"
        )
    else:
        print(f"use with: covidcxr predict --backend onnxruntime --onnx-dir {out} ...")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from collections import Counter

    from ..data import load_records

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
