"""The diagnosis evaluation and shortcut audit as Markdown, plain-language verdicts and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ...data.classification import CLASSES
from ...metrics import with_ci
from ...plots import pyplot
from .metrics import ALL_SOURCES


def rounded(ci: dict) -> dict:
    """A CI dict with its floats rounded to 4 places (for a weights spec)."""
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ci.items()}


def ci_cell(r: dict) -> str:
    """'value (low–high)' of a CI dict; n/a when undefined."""
    if not np.isfinite(r["value"]):
        return "n/a"
    return with_ci(r)


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.1%}"


def markdown_table(summary: dict) -> str:
    """The evaluation as Markdown: per source and class, AUROC/AUPRC with CIs and the operating point."""
    lines = [
        f"Split: {summary['split']}; lung input: {summary['lung_input']}; probabilities calibrated with temperature {summary['temperature']:.3f}. "
        "95% CIs: stratified bootstrap (1000 resamples). Operating point: the most probable class. n/a: the class is absent from that source.",
        "",
        "| source | class | n (pos) | AUROC | AUPRC | sensitivity | specificity | PPV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for src, res in summary["per_source"].items():
        for c, r in res["per_class"].items():
            lines.append(
                f"| {src} | {c} | {res['n']} ({r['n_pos']}) | {ci_cell(r['auroc'])} | {ci_cell(r['auprc'])} | {_pct(r['sensitivity'])} | {_pct(r['specificity'])} | {_pct(r['ppv'])} |"
            )
    lines += ["", "| source | n | macro AUROC | accuracy | ECE |", "|---|---|---|---|---|"]
    for src, res in summary["per_source"].items():
        lines.append(f"| {src} | {res['n']} | {res['macro_auroc']:.3f} | {res['accuracy']:.3f} | {res['ece']:.3f} |")
    cvo = summary["covid_vs_other_in_covid_chestxray"]
    lines += [
        "",
        f"COVID-19 vs other pneumonia inside covid-chestxray (one source): AUROC {ci_cell(cvo)}, n = {cvo['n']} ({cvo['n_pos']} COVID-19).",
    ]
    if summary.get("covid_vs_each_finding_in_covid_chestxray"):
        lines += [
            "",
            "COVID-19 against each other-pneumonia finding inside covid-chestxray (tiny counts: read as a description, not an estimate):",
            "",
            "| finding | n | AUROC, COVID-19 vs this finding | median COVID-19 odds of its images |",
            "|---|---|---|---|",
        ]
        for name, r in summary["covid_vs_each_finding_in_covid_chestxray"].items():
            lines.append(f"| {name} | {r['n']} | {r['auroc']:.3f} | {r['median_covid_odds']:.3f} |")
        lines.append("")
    if "saliency_in_lungs" in summary and not summary["saliency_in_lungs"]["n"]:
        lines.append("Heat map inside the lungs: no image had a heat map (an all-zero map has no share).")
    elif "saliency_in_lungs" in summary:
        s = summary["saliency_in_lungs"]
        lines.append(
            f"Heat map inside the lungs: mean {s['mean']:.1%}, median {s['median']:.1%} (n = {s['n']}); images with less than half inside: {s['share_below_0.5']:.1%}."
            + (
                f" Mean share in the patient's right lung {s['right_lung_mean']:.1%}, left lung {s['left_lung_mean']:.1%}."
                if "left_lung_mean" in s
                else ""
            )
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Plots


def plot_roc(views: dict, probs: np.ndarray, path: Path, title: str = "") -> None:
    """One-vs-rest ROC curves per class, pooled and per source."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    sources = [ALL_SOURCES, *sorted({s["dataset"] for s in views["samples"]})]
    src = np.array([s["dataset"] for s in views["samples"]])
    fig, axes = plt.subplots(1, len(sources), figsize=(3.6 * len(sources), 3.6), squeeze=False)
    for ax, name in zip(axes[0], sources):
        m = np.ones(len(src), bool) if name == ALL_SOURCES else src == name
        for c, cls in enumerate(CLASSES):
            y = views["labels"][m] == c
            if 0 < y.sum() < len(y):
                fpr, tpr, _ = roc_curve(y, probs[m, c])
                ax.plot(fpr, tpr, label=f"{cls} {roc_auc_score(y, probs[m, c]):.3f}")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{name} (n={int(m.sum())})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_calibration(per_source: dict, path: Path) -> None:
    """Reliability diagrams (top-class confidence vs accuracy) per source and pooled."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(per_source), figsize=(3.4 * len(per_source), 3.4), squeeze=False)
    for ax, (name, res) in zip(axes[0], per_source.items()):
        bins = res["reliability"]
        ax.bar(
            [(b["low"] + b["high"]) / 2 for b in bins],
            [b["accuracy"] for b in bins],
            width=0.09,
            color="C0",
            alpha=0.7,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{name}\nECE {res['ece']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(per_source: dict, path: Path) -> None:
    """Confusion matrices (rows: truth, columns: prediction) per source and pooled."""
    plt = pyplot()
    short = ["COVID", "Other pn.", "No find."]
    fig, axes = plt.subplots(1, len(per_source), figsize=(3.4 * len(per_source), 3.4), squeeze=False)
    for ax, (name, res) in zip(axes[0], per_source.items()):
        cm = np.array(res["confusion"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks(range(3), short, fontsize=7)
        ax.set_yticks(range(3), short, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: Below this intact COVID-19 AUROC the blacked-out checks say nothing (there is no reading to lose).
INFORMATIVE_AUROC = 0.6


def verdict(summary: dict) -> list[str]:
    """Plain-language reading of the audit, one sentence per check (one for both blacked-out checks when the intact reading ranks nothing)."""
    rows = summary["inputs"]
    intact = rows["intact"]["covid_auroc"]["value"]
    blacked = rows["lungs blacked out"]["covid_auroc"]["value"]
    lungs_only = rows["all but the lungs blacked out"]["covid_auroc"]["value"]
    out = []
    if intact < INFORMATIVE_AUROC:  # nothing to lose: blacking parts out cannot show where such a reading comes from
        out.append(
            f"NOTE: intact, the model ranks COVID-19 against every other {summary.get('split', 'test')} image at AUROC {intact:.2f}, "
            f"below {INFORMATIVE_AUROC:.2f}: the blacked-out checks cannot show where it reads (lungs blacked out {blacked:.2f}, "
            f"all but the lungs blacked out {lungs_only:.2f}). Read the per-source and leave-one-source-out results instead."
        )
    else:
        if 0.35 <= blacked <= 0.65:
            out.append(
                f"PASS: with the lungs blacked out the model no longer tells COVID-19 apart (AUROC {blacked:.2f}, intact {intact:.2f}): what it reads is in the lungs."
            )
        else:
            out.append(
                f"WARN: with the lungs blacked out the model still ranks COVID-19 at AUROC {blacked:.2f} (intact {intact:.2f}): it reads something outside the lungs, a likely shortcut."
            )
        if intact - lungs_only <= 0.05:
            out.append(f"PASS: the lungs alone keep the COVID-19 AUROC ({lungs_only:.2f} vs {intact:.2f} intact).")
        else:
            out.append(
                f"WARN: showing only the lungs lowers the COVID-19 AUROC from {intact:.2f} to {lungs_only:.2f}: part of the decision comes from outside the lungs."
            )
    probe = summary["source_probe"]["all classes"]
    decision = next(
        (v for k, v in summary["source_probe"].items() if k.startswith("decision") and k.endswith("all classes")), None
    )
    out.append(
        f"NOTE: a linear probe on the model's features names the image's source with balanced accuracy {probe['balanced_accuracy']:.2f} "
        f"(chance {probe['chance']:.2f})"
        + (f"; on its decision, {decision['balanced_accuracy']:.2f}" if decision else "")
        + ". Source information is in the features, as it is in the pixels (age group, processing); "
        "per-source results and the within-source test below are the numbers to trust, not the pooled AUROC."
    )
    within = rows["intact"]["covid_vs_other_in_covid_chestxray"]
    word = "PASS" if within["value"] >= 0.8 else "WARN"
    out.append(
        f"{word}: inside covid-chestxray alone (one source, no source shortcut) COVID-19 vs other pneumonia AUROC {ci_cell(within)}, n = {within['n']} ({within['n_pos']} COVID-19)."
    )
    return out


def audit_markdown(summary: dict) -> str:
    lines = [
        f"Shortcut audit, {summary['split']} split (n = {summary['n']}). AUROC with stratified bootstrap 95% CIs.",
        "",
        "| input | COVID-19 AUROC (one vs rest) | macro AUROC | COVID-19 vs other pneumonia, covid-chestxray only | macro AUROC per source |",
        "|---|---|---|---|---|",
    ]
    for name, r in summary["inputs"].items():
        per = ", ".join(f"{s} {v:.3f}" for s, v in r["per_source_macro_auroc"].items())
        lines.append(
            f"| {name} | {ci_cell(r['covid_auroc'])} | {r['macro_auroc']:.3f} | {ci_cell(r['covid_vs_other_in_covid_chestxray'])} | {per} |"
        )
    lines += [
        "",
        "| source probe (logistic regression on pooled features) | balanced accuracy | chance | n train / test |",
        "|---|---|---|---|",
    ]
    for name, p in summary["source_probe"].items():
        lines.append(
            f"| {name} ({', '.join(p['sources'])}) | {p['balanced_accuracy']:.3f} | {p['chance']:.3f} | {p['n_train']} / {p['n_test']} |"
        )
    lines += ["", "Verdict:", ""] + [f"- {v}" for v in summary["verdict"]]
    return "\n".join(lines) + "\n"


#: The lungs-blacked-out band: a finding or P(abnormal) inside it tells the classes apart no better than chance.
BLACKOUT_BAND = (0.40, 0.60)
#: All but the lungs blacked out: P(abnormal)'s AUROC stays within this of intact.
OUTSIDE_TOLERANCE = 0.03


def archive_checks_verdict(archives: dict) -> list[str]:
    """One sentence per archive: which scores leave the blackout band, and P(abnormal) with only the lungs shown."""
    out = []
    lo, hi = BLACKOUT_BAND
    for name, a in archives.items():
        modes = a["modes"]
        outside = {k: r["value"] for k, r in modes["lungs blacked out"].items() if not lo <= r["value"] <= hi}
        intact, lungs = (modes[m]["P(abnormal)"]["value"] for m in ("intact", "all but the lungs blacked out"))
        drift = abs(lungs - intact)
        out.append(
            f"{'PASS' if not outside else 'WARN'}: {name}, lungs blacked out: "
            + (
                f"every fact and P(abnormal) at AUROC {lo:.2f}-{hi:.2f}"
                if not outside
                else "outside " + f"{lo:.2f}-{hi:.2f}: " + ", ".join(f"{k} {v:.2f}" for k, v in outside.items())
            )
            + f"; {'PASS' if drift <= OUTSIDE_TOLERANCE else 'WARN'}: only the lungs shown, P(abnormal) {lungs:.3f} vs {intact:.3f} intact."
        )
    return out


def archive_markdown(archives: dict) -> str:
    """Per archive: AUROC of each fact and P(abnormal) intact, lungs blacked out, all but the lungs blacked out.

    The tables only: their verdicts (:func:`archive_checks_verdict`) are in the audit's one verdict list.
    """
    lines = []
    for name, a in archives.items():
        modes = list(a["modes"])
        lines += [
            "",
            f"### {name} (n = {a['n']}, {a['n_positive']} positive)",
            "",
            "| score | " + " | ".join(modes) + " |",
            "|---|" + "---|" * len(modes),
        ]
        for key in a["modes"][modes[0]]:
            lines.append(f"| {key} | " + " | ".join(ci_cell(a["modes"][m][key]) for m in modes) + " |")
    return (
        ("\n## Blackouts per archive: every finding fact and P(abnormal)\n" + "\n".join(lines) + "\n")
        if archives
        else ""
    )


def plot_audit(summary: dict, path: Path) -> None:
    """COVID-19 AUROC with CIs for each input, beside chance."""
    plt = pyplot()
    names = list(summary["inputs"])
    fig, ax = plt.subplots(figsize=(7, 3))
    for i, n in enumerate(names):
        for j, (key, color) in enumerate((("covid_auroc", "C0"), ("covid_vs_other_in_covid_chestxray", "C1"))):
            r = summary["inputs"][n][key]
            if np.isfinite(r["value"]):
                ax.errorbar(
                    r["value"],
                    i + (j - 0.5) * 0.25,
                    xerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                    fmt="o",
                    color=color,
                    capsize=3,
                    label=(
                        "COVID-19 vs rest, all sources" if j == 0 else "COVID-19 vs other pneumonia, covid-chestxray"
                    )
                    if i == 0
                    else None,
                )
    ax.axvspan(0.35, 0.65, color="0.9", zorder=0, label="no better than chance")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlim=(0, 1.02), xlabel="AUROC", title="Shortcut audit")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
