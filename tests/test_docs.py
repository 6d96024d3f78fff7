"""The docs stay true and short: every repository path they name exists; README and card within their size."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from covidcxr.config import CONFIGS_DIR

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "MODEL_CARD.md", *sorted((ROOT / "docs").rglob("*.md"))]
TOP = ("src/", "docs/", "tests/", "benchmarks/", "scripts/", "configs/", "notebooks/", "study/", "experiments/")
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(re.escape(t) for t in TOP) + r")[\w./-]*[\w/])")


def named_paths(text: str) -> set[str]:
    """Repository paths in a page: links and code spans alike, placeholders and globs left out."""
    return {
        m.group(1).rstrip(".")
        for m in PATH.finditer(text)
        if not re.search(r"[<>*{}]", m.group(1)) and text[m.end() : m.end() + 1] not in ("<", "*", "{")
    }


def test_the_path_finder_finds_paths_and_skips_placeholders():
    text = "see `src/covidcxr/io/__init__.py`, [x](docs/usage.md#a) and `runs/x/y.json`, `docs/results/<name>/`."
    assert named_paths(text) == {"src/covidcxr/io/__init__.py", "docs/usage.md"}


def _exists(path: str, page: Path) -> bool:
    if path.startswith("configs/"):  # a shipped recipe, found by name from any folder (covidcxr.config.recipe_path)
        return (CONFIGS_DIR / Path(path).name).is_file()
    return (ROOT / path).exists() or (page.parent / path).exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_page_names_exists(page):
    text = page.read_text()
    missing = sorted(p for p in named_paths(text) if not _exists(p, page))
    assert missing == [], f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_readme_and_model_card_stay_short():
    assert (ROOT / "README.md").stat().st_size <= 15_000
    assert (ROOT / "MODEL_CARD.md").stat().st_size <= 25_000


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    slugs = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return slugs


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_into_the_model_card_find_their_heading(page):
    card = _anchors(ROOT / "MODEL_CARD.md")
    links = re.findall(r"MODEL_CARD\.md#([\w-]+)", page.read_text())
    assert sorted(set(links) - card) == []
