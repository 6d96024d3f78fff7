"""Render MODEL_CARD.md's metric tables from the weights specs and the evaluation outputs.

    python scripts/model_card.py            # rewrite every generated table of MODEL_CARD.md in place
    python scripts/model_card.py --check    # exit 1 and name the tables that differ from the JSON

Sources (read only):
  src/covidcxr/weights/*.json              weights specs: name, task, architecture, sha256, training, metrics
  docs/results/stage2-{loso,prior,cnn,archive}/loso.json  leave-one-source-out of every stage-2 design
  docs/results/gate-lungs-D/gate_eval.json  input gate, refusals per source and split
  docs/results/severity/severity_eval.json severity heads, 50 patient-grouped splits
  docs/results/lungs-through-opacity/D-test/comparison.json  the shipped lung model's HD95 CIs

A table lives between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in the card; the
text between the markers is replaced, everything else is left as written. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Aims written in the experiments' rules before the runs (docs/experiments/*.md); not measurements.
LOSO_AIMS = {
    "covid19-radiography COVID-19 vs No finding (NIH left out too)": 0.85,
    "covid-chestxray COVID-19 vs Other pneumonia": 0.75,
    "NIH Other pneumonia vs No finding": 0.75,
}
GATE_FRONTAL_AIM = 0.02
GATE_LATERAL_CT_AIM = 0.95
SEVERITY_AIMS = {"geographic_extent": 1.14, "opacity": 0.78}  # Cohen et al. 2020
SEGMENTATION_SOURCES = [
    ("v7labs", "v7labs (ieee8023, manual)"),
    ("generalblockchain", "GeneralBlockchain (ieee8023, radiologists)"),
    ("kermany-v7labs", "Kermany v7labs (paediatric, manual)"),
    ("all_manual", "all manual masks"),
]
MARKER = re.compile(
    r"(?P<open><!-- generated:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(?P<close><!-- /generated:(?P=name) -->)",
    re.DOTALL,
)


# ---------------------------------------------------------------- formatting


def num(x: float | None, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def with_ci(value: float, low: float | None, high: float | None, nd: int = 3) -> str:
    if low is None or high is None:
        return num(value, nd)
    return f"{num(value, nd)} ({num(low, nd)}–{num(high, nd)})"


def stat(d: dict, nd: int = 3) -> str:
    """``{"value"|"mean": v, "ci_low": a, "ci_high": b}`` -> ``v (a–b)``."""
    value = d.get("value", d.get("mean"))
    return with_ci(value, d.get("ci_low"), d.get("ci_high"), nd)


def pct(x: float, nd: int = 1) -> str:
    return f"{100 * x:.{nd}f}%"


def refusals(d: dict) -> str:
    """``{"n", "refused", "rate", "ci"}`` -> ``1/79 = 1.3% [0.2%, 6.8%]``, as gate_eval.md writes it."""
    lo, hi = d["ci"]
    return f"{d['refused']}/{d['n']} = {pct(d['rate'])} [{pct(lo)}, {pct(hi)}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def file_size(n_bytes: int) -> str:
    if n_bytes >= 1024**2:
        return f"{n_bytes / 1024**2:.1f} MiB"
    return f"{n_bytes / 1024:.1f} KiB"


def source_note(*names: str) -> str:
    return "<!-- written by scripts/model_card.py from " + ", ".join(names) + "; edit the JSON, not this table -->"


# ---------------------------------------------------------------- inputs


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def load_specs(weights: Path) -> dict[str, dict]:
    specs = {}
    for path in sorted(weights.glob("*.json")):
        spec = load_json(path)
        if isinstance(spec, dict) and {"name", "sha256", "task"} <= spec.keys():
            spec["_path"] = path
            specs[spec["name"]] = spec
    return specs


def spec_for(specs: dict[str, dict], task: str) -> dict:
    found = [s for s in specs.values() if s["task"] == task]
    if not found:
        raise KeyError(f"no weights spec with task {task!r}")
    return found[0]


class Sources:
    """The JSON files the tables are made from, read lazily."""

    def __init__(self, weights: Path, results: Path):
        self.weights = weights
        self.results = results
        self.specs = load_specs(weights)
        self._cache: dict[str, dict] = {}

    def result(self, rel: str) -> dict:
        if rel not in self._cache:
            self._cache[rel] = load_json(self.results / rel)
        return self._cache[rel]


# ---------------------------------------------------------------- tables


def t_models(src: Sources) -> list[str]:
    rows = []
    for name, spec in sorted(src.specs.items()):
        training = spec.get("training", {})
        data = training.get("data", {})
        split = data.get("split_version") or training.get("split_version") or "–"
        weights_file = src.weights / spec.get("file", "")
        size = file_size(weights_file.stat().st_size) if weights_file.is_file() else "missing"
        command = training.get("command")
        rows.append(
            [
                f"`{name}`",
                spec["task"],
                f"`{spec['architecture']}`",
                f"{size} ({spec.get('dtype', '?')})",
                f"`{spec['sha256'][:12]}`",
                split,
                f"`{command}`" if command else "–",
            ]
        )
    header = ["model", "task", "architecture", "file size", "sha256", "split", "trained with"]
    return [source_note("src/covidcxr/weights/*.json")] + table(header, rows)


#: The paired test comparison that holds the shipped lung model's HD95 CIs.
LUNG_COMPARISON = "lungs-through-opacity/D-test/comparison.json"


def t_segmentation(src: Sources) -> list[str]:
    spec = spec_for(src.specs, "lung-segmentation")
    m = spec["metrics"]
    hd95_ci = {}
    try:
        comparison = src.result(LUNG_COMPARISON)
    except FileNotFoundError:
        comparison = {}
    side = next((k for k, v in comparison.get("sha256", {}).items() if v == spec["sha256"]), None)
    if side and comparison.get("split") == m.get("split"):
        hd95_ci = {k: v[f"hd95_{side}"] for k, v in comparison["per_source"].items()}
    rows = []
    for key, label in SEGMENTATION_SOURCES:
        dice = m["dice"][key]
        hd95 = m["hd95_px"][key]
        ci = hd95_ci.get(key, {})
        rows.append([label, str(dice["n"]), stat(dice, 4), with_ci(hd95, ci.get("ci_low"), ci.get("ci_high"), 1)])
    if "human_ceiling_dice" in m:
        rows.append(
            [
                "human ceiling: v7labs vs GeneralBlockchain on the images both annotated",
                "",
                num(m["human_ceiling_dice"], 4),
                "",
            ]
        )
    note = source_note(f"{spec['name']}.json metrics", f"{LUNG_COMPARISON} (HD95 CIs)")
    header = [f"mask source ({m.get('split', '?')} split)", "n", "Dice (95% CI)", "HD95 px (95% CI)"]
    return [note] + table(header, rows)


def t_gate(src: Sources) -> list[str]:
    ev = src.result("gate-lungs-D/gate_eval.json")
    test = ev["results"]["test"]
    kinds = test["per_kind"]
    rows = []
    for key in sorted(k for k in kinds if k.endswith(":frontal")):
        source = key.split(":")[0]
        d = kinds[key]
        missed = d["rate"] > GATE_FRONTAL_AIM
        cell = refusals(d)
        all_splits = ev["all_splits"].get(source)
        every = f"{all_splits['refused']}/{all_splits['n']}" if all_splits else "–"
        oof = ev.get("out_of_fold", {})
        if oof.get("source") == source:
            every += f"; out of fold by patient {oof['refused']}/{oof['n']}"
        aim = f"≤ {pct(GATE_FRONTAL_AIM, 0)}: " + ("**missed**" if missed else "met")
        rows.append([f"{source} frontal (false refusals)", f"**{cell}**" if missed else cell, every, aim])
    lat = test["lateral_ct"]
    splits = [s for s in ev["results"].values() if "lateral_ct" in s]
    lat_all = f"{sum(s['lateral_ct']['refused'] for s in splits)}/{sum(s['lateral_ct']['n'] for s in splits)}"
    lat_aim = f"≥ {pct(GATE_LATERAL_CT_AIM, 0)}: " + ("met" if lat["rate"] >= GATE_LATERAL_CT_AIM else "**missed**")
    rows.append(["lateral views + CT slices (true refusals)", refusals(lat), lat_all, lat_aim])
    for kind, label in (("photo", "photograph crops"), ("synthetic", "synthetic images")):
        if kind in kinds:
            rows.append([label, refusals(kinds[kind]), "", "reported"])
    header = ["input", "test split: refused / n = rate [Wilson 95% CI]", "all splits", "aim"]
    return [source_note("gate-lungs-D/gate_eval.json")] + table(header, rows)


def shipped_design(src: Sources) -> str:
    cfg = spec_for(src.specs, "diagnosis").get("training", {}).get("config", {})
    return f"{cfg.get('design', 'pooled')} / {cfg.get('features', 'findings')}"


def loso_comparisons(row: dict) -> list[str]:
    return [k for k, v in row.items() if isinstance(v, dict) and "value" in v]


#: The LOSO comparisons' outputs, in the order they were run; a design's first row is the one shown.
LOSO_RESULTS = ("stage2-loso/loso.json", "stage2-prior/loso.json", "stage2-cnn/loso.json", "stage2-archive/loso.json")


#: The LOSO run of the shipped chain (the stage-2 heads on the findings of the shipped lung and lesion models).
SHIPPED_LOSO = "stage2-lungs-only/loso.json"


def shipped_loso(src: Sources) -> tuple[dict, str]:
    """The shipped design's LOSO row and its file: :data:`SHIPPED_LOSO`, else the design's first row."""
    try:
        return src.result(SHIPPED_LOSO)["results"][shipped_design(src)], SHIPPED_LOSO
    except (FileNotFoundError, KeyError):
        return loso_rows(src)[shipped_design(src)]


def loso_rows(src: Sources) -> dict[str, tuple[dict, str]]:
    """design / features -> (its LOSO row, the file it came from), over :data:`LOSO_RESULTS`."""
    rows: dict[str, tuple[dict, str]] = {}
    for rel in LOSO_RESULTS:
        for name, row in src.result(rel)["results"].items():
            rows.setdefault(name, (row, rel))
    return rows


def t_loso(src: Sources) -> list[str]:
    design = shipped_design(src)
    row, rel = shipped_loso(src)
    rows = []
    for comparison in loso_comparisons(row):
        d = row[comparison]
        aim = LOSO_AIMS.get(comparison)
        aim_cell = f"≥ {aim:.2f}: " + ("met" if d["value"] >= aim else "not met") if aim else ""
        rows.append([comparison, str(d["n"]), stat(d), aim_cell])
    header = ["in the source left out", "n", f"shipped (`{design}`), 95% CI", "aim"]
    return [source_note(rel, "the diagnosis spec's design")] + table(header, rows)


def t_loso_designs(src: Sources) -> list[str]:
    design = shipped_design(src)
    every = loso_rows(src)
    comparisons = loso_comparisons(next(iter(every.values()))[0])
    rows = []
    for name, (row, rel) in every.items():
        label = f"**{name}** (shipped)" if name == design else name
        rows.append([label] + [stat(row[c], 3) for c in comparisons] + [num(row.get("primary")), rel.split("/")[0]])
    header = ["design / features"] + comparisons + ["primary", "run"]
    return [source_note(*LOSO_RESULTS)] + table(header, rows)


def t_diagnosis_internal(src: Sources) -> list[str]:
    spec = spec_for(src.specs, "diagnosis")
    it = spec["metrics"]["internal_test"]
    lo, hi = it.get("ci", [None, None])
    split = spec.get("training", {}).get("data", {}).get("split_version", "?")
    rows = [[f"`{spec['name']}`", f"{split}, test", str(it["n"]), f"**{with_ci(it['macro_auroc'], lo, hi)}**"]]
    header = ["model", "split", "n", "macro AUROC, one-vs-rest, 3 classes (95% CI)"]
    return [source_note(f"{spec['name']}.json metrics.internal_test")] + table(header, rows)


def t_severity(src: Sources) -> list[str]:
    ev = src.result("severity/severity_eval.json")
    rows = []
    scales = {"geographic_extent": "geographic extent (0–8)", "opacity": "opacity (0–6)"}
    for key, label in scales.items():
        s = ev["scores"][key]
        aim = SEVERITY_AIMS[key]
        met = s["model"]["mae"]["mean"] <= aim
        rows.append(
            [
                f"{label} MAE",
                str(s["n"]),
                f"**{stat(s['model']['mae'], 2)}**",
                stat(s["mean_baseline"]["mae"], 2),
                stat(s["model"]["r2"], 2),
                stat(s["model"]["pearson_r"], 2),
                f"≤ {aim:.2f} (Cohen et al. 2020): " + ("met" if met else "not reached"),
            ]
        )
    b = ev["brixia"]
    n = str(b.get("n", len(b.get("predictions", []))))
    junior = b["junior_rater"]
    met = b["model"]["global_mae"]["mean"] <= junior["global_mae"]["mean"]
    rows.append(
        [
            "Brixia global (0–18) MAE vs the senior rater",
            n,
            f"**{stat(b['model']['global_mae'], 2)}**",
            stat(b["mean_baseline"]["global_mae"], 2),
            stat(b["model"]["global_r2"], 2),
            stat(b["model"]["global_pearson_r"], 2),
            f"≤ junior rater {stat(junior['global_mae'], 2)}: " + ("met" if met else "not reached"),
        ]
    )
    rows.append(
        [
            "Brixia zone (0–3) MAE",
            n,
            stat(b["model"]["zone_mae"], 2),
            stat(b["mean_baseline"]["zone_mae"], 2),
            "",
            "",
            f"junior rater {stat(junior['zone_mae'], 2)}",
        ]
    )
    header = ["measure", "n", "model", "predict-the-mean", "model R²", "model Pearson r", "reference / aim"]
    return [source_note("severity/severity_eval.json")] + table(header, rows)


def t_severity_ablation(src: Sources) -> list[str]:
    ablation = src.result("severity/severity_eval.json").get("ablation", {})
    rows = [
        [f"`{features}`", num(v["geographic_extent"], 2), num(v["opacity"], 2), num(v["brixia_global"], 2)]
        for features, v in ablation.items()
    ]
    header = ["features (without the Brixia route)", "extent MAE", "opacity MAE", "Brixia global MAE"]
    return [source_note("severity/severity_eval.json ablation")] + table(header, rows)


def t_lesions(src: Sources) -> list[str]:
    spec = spec_for(src.specs, "lesions")
    m = spec["metrics"]
    rows = []
    for lesion in spec.get("targets", ["ground-glass", "consolidation"]):
        d = m[lesion]
        rows.append(
            [
                lesion,
                f"{stat(d['dice'], 2)}, n = {d['dice']['n']}",
                f"{pct(d['model_only']['rate'], 0)} of {d['model_only']['n']}",
                f"{pct(d['radiologist_only']['rate'], 0)} of {d['radiologist_only']['n']}",
            ]
        )
    neg = m.get("test_no_finding_with_lesions")
    header = [
        "lesion (out of fold)",
        "Dice on marked images (95% CI)",
        "found (≥ 1% of the lungs) where radiologists marked none",
        "marked by radiologists, not found",
    ]
    lines = [source_note(f"{spec['name']}.json metrics")] + table(header, rows)
    if neg:
        lines += [
            "",
            f'Test-split "No finding" images with any lesion found (≥ 1% of the lungs): {pct(neg["rate"], 0)} of {neg["n"]}.',
        ]
    return lines


TABLES: dict[str, Callable[[Sources], list[str]]] = {
    "models": t_models,
    "segmentation": t_segmentation,
    "gate": t_gate,
    "loso": t_loso,
    "loso-designs": t_loso_designs,
    "diagnosis-internal": t_diagnosis_internal,
    "severity": t_severity,
    "severity-ablation": t_severity_ablation,
    "lesions": t_lesions,
}


# ---------------------------------------------------------------- consistency of the JSON files


def consistency(src: Sources) -> list[str]:
    """Numbers stored twice (a spec's metrics and an evaluation output) that disagree."""
    problems = []

    def compare(what: str, a: float, b: float, tol: float = 5e-4) -> None:
        if not (math.isnan(a) and math.isnan(b)) and abs(a - b) > tol:
            problems.append(f"{what}: spec {a} vs results {b}")

    try:
        loso = shipped_loso(src)[0]
        for k, v in spec_for(src.specs, "diagnosis")["metrics"].get("loso", {}).items():
            compare(f"LOSO {k}", v, loso[k]["value"])
        gate = src.result("gate-lungs-D/gate_eval.json")["results"]["test"]["per_kind"]
        for k, v in spec_for(src.specs, "gate")["metrics"].get("frontal_refused_per_source", {}).items():
            compare(f"gate test refusals {k}", v, gate[f"{k}:frontal"]["rate"])
        sev = src.result("severity/severity_eval.json")
        spec_sev = spec_for(src.specs, "severity")["metrics"]
        for k, v in spec_sev.get("scores", {}).items():
            compare(f"severity {k} MAE", v["mae"], sev["scores"][k]["model"]["mae"]["mean"])
        for who, v in spec_sev.get("brixia", {}).items():
            compare(f"Brixia {who} global MAE", v["global_mae"], sev["brixia"][who]["global_mae"]["mean"])
    except (KeyError, FileNotFoundError) as e:
        problems.append(f"could not compare: {e!r}")
    return problems


# ---------------------------------------------------------------- card


def render(card: str, src: Sources) -> tuple[str, list[str], list[str]]:
    """The page with every generated block rewritten; the names that changed; the names it lacks."""
    changed: list[str] = []
    seen: set[str] = set()

    def replace(match: re.Match) -> str:
        name = match["name"]
        seen.add(name)
        if name not in TABLES:
            raise SystemExit(f"model_card: unknown generated table {name!r} in the card (known: {', '.join(TABLES)})")
        body = "\n".join(TABLES[name](src)) + "\n"
        if body != match["body"]:
            changed.append(name)
        return match["open"] + body + match["close"]

    new = MARKER.sub(replace, card)
    missing = [name for name in TABLES if name not in seen]
    return new, changed, missing


#: Pages with generated tables: the card (what ships) and the experiment page that holds the
#: full design comparison behind the shipped stage 2.
PAGES = (ROOT / "MODEL_CARD.md", ROOT / "docs/experiments/stage2-source-blind.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, default=ROOT / "src/covidcxr/weights", help="folder of weights specs")
    p.add_argument("--results", type=Path, default=ROOT / "docs/results", help="folder of evaluation outputs")
    p.add_argument("--card", type=Path, nargs="+", default=list(PAGES), help="the pages to rewrite or check")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from the JSON")
    args = p.parse_args(argv)

    src = Sources(args.weights, args.results)
    rendered = {page: render(page.read_text(), src) for page in args.card}
    changed = [f"{page.name}: {name}" for page, (_, names, _) in rendered.items() for name in names]
    missing = [name for name in TABLES if all(name in lacks for _, _, lacks in rendered.values())]
    for problem in consistency(src):
        print(f"model_card: warning: {problem}", file=sys.stderr)
    pages = ", ".join(str(page) for page in args.card)
    if args.check:
        if changed or missing:
            if changed:
                print(f"model_card: out of date: {', '.join(changed)}", file=sys.stderr)
            if missing:
                print(f"model_card: no markers in {pages} for: {', '.join(missing)}", file=sys.stderr)
            print("model_card: run `python scripts/model_card.py` to rewrite them", file=sys.stderr)
            return 1
        print(f"model_card: {pages} in sync ({len(TABLES)} tables)")
        return 0
    if missing:
        print(f"model_card: warning: no markers in {pages} for: {', '.join(missing)}", file=sys.stderr)
    for page, (new, _, _) in rendered.items():
        if new != page.read_text():
            page.write_text(new)
    print(f"model_card: {len(changed)} table(s) rewritten" + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
