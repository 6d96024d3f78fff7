"""The ``covidcxr evaluate ...`` subcommands' arguments."""

from __future__ import annotations

from .evaluate import (
    cmd_evaluate_diagnosis,
    cmd_evaluate_gate,
    cmd_evaluate_segmentation,
    cmd_evaluate_severity,
    cmd_evaluate_uncertainty,
)
from .helptext import SHIPPED, add_data_root, add_weights, command

SPLIT_HELP = "patient-level split to evaluate on (see covidcxr splits)"
LIMIT_HELP = "at most this many samples per source (quick checks; 0: all)"


def add_evaluate_tasks(ev) -> None:
    add_evaluate_segmentation(ev)
    add_evaluate_diagnosis(ev)
    add_evaluate_severity(ev)
    add_evaluate_gate(ev)
    add_evaluate_uncertainty(ev)


def add_evaluate_segmentation(ev) -> None:
    e = command(
        ev,
        "segmentation",
        "Dice, IoU, HD95 per mask source with bootstrap CIs",
        "covidcxr evaluate segmentation --split test --out eval/segmentation",
        "covidcxr evaluate segmentation --lung-weights runs/segmentation/export/unet_mobilenetv2_lungs.json --split val --limit 20",
        "covidcxr evaluate segmentation --compare A.json B.json --out eval/seg-compare",
    )
    add_weights(e, "--lung-weights", f"lung-segmentation weights spec JSON {SHIPPED}", was_weights=True)
    add_data_root(e)
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help=SPLIT_HELP)
    e.add_argument("--out", default="eval/segmentation", metavar="DIR", help="output folder")
    e.add_argument("--limit", type=int, default=0, help=LIMIT_HELP)
    e.add_argument("--update-spec", action="store_true", help="write the test metrics into the weights spec")
    e.add_argument(
        "--stress",
        action="store_true",
        help="also the stress rows: manual-mask films with synthetic opacity painted into the lungs at three "
        "strengths (lung recall, Dice), and Dice per tertile of expert severity (stress.md)",
    )
    e.add_argument(
        "--sheet",
        metavar="DATASET",
        help="also a contact sheet of every film of one data folder with the lung outline drawn, "
        "e.g. hannover (DATASET_outlines.png; default: none)",
    )
    e.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="two lung weights specs on the same images: Dice and HD95 of each "
        "and the paired difference B - A with bootstrap CIs (comparison.md/.json/.png in --out; default: evaluate one spec)",
    )
    e.set_defaults(func=cmd_evaluate_segmentation)


def add_evaluate_diagnosis(ev) -> None:
    e = command(
        ev,
        "diagnosis",
        "AUROC/AUPRC with CIs, operating point, confusion, calibration, saliency in the lungs; per source and pooled",
        "covidcxr evaluate diagnosis --split test --out eval/diagnosis",
        "covidcxr evaluate diagnosis --split val --limit 20 --no-saliency --out eval/diag-quick",
        "covidcxr evaluate diagnosis --protocol loso --out eval/loso",
    )
    add_weights(e, "--diagnosis-weights", f"diagnosis weights spec JSON {SHIPPED}", was_weights=True)
    add_data_root(e)
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help=SPLIT_HELP)
    e.add_argument("--out", default="eval/diagnosis", metavar="DIR", help="output folder")
    e.add_argument("--limit", type=int, default=0, help=LIMIT_HELP)
    e.add_argument("--update-spec", action="store_true", help="write the test metrics into the weights spec")
    e.add_argument("--no-saliency", action="store_true", help="skip Grad-CAM (faster)")
    e.add_argument(
        "--protocol",
        choices=["split", "loso"],
        default="split",
        help="split (default): the shipped model on --split; loso: leave-one-source-out comparison of the stage-2 designs "
        "(each fold trained without one source, scored on it; --diagnosis-weights and --split do not apply)",
    )
    e.set_defaults(func=cmd_evaluate_diagnosis)


def add_evaluate_severity(ev) -> None:
    evs = command(
        ev,
        "severity",
        "severity protocol: out-of-fold lesion Dice, repeated 50/50 splits for extent, opacity, Brixia",
        "covidcxr evaluate severity --run runs/severity --out eval/severity",
        "covidcxr evaluate severity --run runs/severity --data-root /data/cxr",
    )
    evs.add_argument(
        "--run",
        default="runs/severity",
        metavar="RUN",
        help="severity run folder (its config and lesion folds; missing folds are trained)",
    )
    add_data_root(evs)
    evs.add_argument("--out", default="eval/severity", metavar="DIR", help="output folder")
    evs.set_defaults(func=cmd_evaluate_severity)


def add_evaluate_gate(ev) -> None:
    evg = command(
        ev,
        "gate",
        "input gate: frontal films refused per source and split, lateral/CT refused, Wilson CIs, contact sheet",
        "covidcxr evaluate gate --split test --out eval/gate",
        "covidcxr evaluate gate --split all --source nih-chestxray8",
        "covidcxr evaluate gate --gate-weights runs/gate/export/frontal_cxr_gate.json --out eval/gate-run",
    )
    add_weights(evg, "--gate-weights", "input-gate weights spec JSON (default: the shipped gate)", was_weights=True)
    add_data_root(evg)
    evg.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="patient-level split to evaluate on; all: the three splits, and per-source totals over them",
    )
    evg.add_argument(
        "--source",
        action="append",
        metavar="FOLDER",
        help="only this folder's films (repeatable; photographs and synthetic images left out; default: every source)",
    )
    evg.add_argument("--out", default="eval/gate", metavar="DIR", help="output folder")
    evg.set_defaults(func=cmd_evaluate_gate)


def add_evaluate_uncertainty(ev) -> None:
    evu = command(
        ev,
        "uncertainty",
        "fit on the validation split the headline's operating point and when a reading says it is unsure "
        "(docs/experiments/operating-point.md, docs/experiments/uncertainty.md); LOSO estimate per source",
        "covidcxr evaluate uncertainty --out eval/uncertainty",
        "covidcxr evaluate uncertainty --out runs/headline --spec src/covidcxr/weights/source_blind_diagnosis.json",
    )
    add_data_root(evu)
    evu.add_argument("--out", default="eval/uncertainty", metavar="DIR", help="output folder (headline.json)")
    evu.add_argument(
        "--spec",
        metavar="SPEC",
        help="diagnosis weights spec JSON to read and to write the operating point and thresholds into "
        "(default: the shipped model, and nothing is written)",
    )
    evu.add_argument(
        "--no-loso",
        action="store_true",
        help="skip the leave-one-source-out estimate (it reads the cached stage-2 features of every split)",
    )
    evu.add_argument(
        "--limit", type=int, default=0, metavar="N", help="at most N validation images per source (a smoke run)"
    )
    evu.set_defaults(func=cmd_evaluate_uncertainty)
