"""The documentation a person reads: MODEL_CARD.md's generated tables are in sync with the JSON they
come from, the README stays short, and relative links in the README and docs/ point at files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "model_card.py"
WEIGHTS = ROOT / "src" / "covidcxr" / "weights"
RESULTS = ROOT / "docs" / "results"
CARD = ROOT / "MODEL_CARD.md"
DESIGNS = ROOT / "docs" / "experiments" / "stage2-source-blind.md"

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def run_script(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Copies of the weights specs (and weight files, for their sizes), the results and the card."""
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS, weights, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results, ignore=shutil.ignore_patterns("*.png", "*.py"))
    card = tmp_path / "MODEL_CARD.md"
    shutil.copy(CARD, card)
    shutil.copy(DESIGNS, tmp_path / DESIGNS.name)  # the page that holds the LOSO design table
    return weights, results, card


def test_card_in_sync():
    done = run_script("--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_copies_in_sync(copies):
    weights, results, card = copies
    done = run_script("--check", "--weights", weights, "--results", results, "--card", card, card.parent / DESIGNS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_changed_spec_value_fails_check_and_rewrite_fixes_it(copies):
    weights, results, card = copies
    path = weights / "unet_mobilenetv2_lungs.json"
    spec = json.loads(path.read_text())
    spec["metrics"]["dice"]["v7labs"]["value"] = 0.9123
    path.write_text(json.dumps(spec, indent=2))
    args = ("--weights", weights, "--results", results, "--card", card, card.parent / DESIGNS.name)

    done = run_script("--check", *args)
    assert done.returncode == 1
    assert "segmentation" in done.stderr
    stale = next(line for line in done.stderr.splitlines() if "out of date" in line)
    assert stale.endswith(": segmentation"), stale

    before = card.read_text()
    assert run_script(*args).returncode == 0
    after = card.read_text()
    assert "0.9123" in after and "0.9123" not in before
    assert run_script("--check", *args).returncode == 0
    # only the generated block changed: prose outside the markers is kept as written
    outside = re.compile(r"<!-- generated:segmentation -->.*?<!-- /generated:segmentation -->", re.DOTALL)
    assert outside.sub("", before) == outside.sub("", after)


def test_changed_result_value_fails_check(copies):
    weights, results, card = copies
    path = results / "stage2-loso" / "loso.json"
    loso = json.loads(path.read_text())
    loso["results"]["pooled / findings"]["hannover COVID-19 sensitivity"]["value"] = 0.5
    path.write_text(json.dumps(loso))
    done = run_script("--check", "--weights", weights, "--results", results, "--card", card, card.parent / DESIGNS.name)
    assert done.returncode == 1
    assert "loso" in done.stderr


def test_missing_marker_fails_check(copies):
    weights, results, card = copies
    text = card.read_text()
    start, end = text.index("<!-- generated:gate -->"), text.index("<!-- /generated:gate -->")
    card.write_text(text[:start] + text[end + len("<!-- /generated:gate -->") :])
    done = run_script("--check", "--weights", weights, "--results", results, "--card", card, card.parent / DESIGNS.name)
    assert done.returncode == 1
    assert "gate" in done.stderr


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 15000


def test_readme_quick_start_commands():
    readme = (ROOT / "README.md").read_text()
    for command in (
        "python3 -m venv .venv && . .venv/bin/activate && pip install .",  # the light install: the reader
        "covidcxr predict --out out/sample",
        'pip install -e ".[all]"',  # researchers and the tests
        "python -m pytest -q",
    ):
        assert command in readme


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "MODEL_CARD.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    text = path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks hold no links
    links = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, mailto:, in-page anchors
        links.append(target)
    return links


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(path: Path):
    broken = []
    for target in relative_links(path):
        file_part = unquote(target.split("#", 1)[0])
        if not file_part:
            continue
        if not (path.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files: {broken}"


def test_docs_have_links_checked():
    # guard against a link pattern that silently matches nothing
    assert "docs/usage.md" in relative_links(ROOT / "README.md")
