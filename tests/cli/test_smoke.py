"""A smoke run's files each say that its numbers mean nothing (:func:`covidcxr.cli.smoke.mark_smoke_run`)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from covidcxr.cli.smoke import SMOKE_NOTE, mark_smoke_run
from covidcxr.specs import WeightSpec


def test_every_kind_of_file_is_marked_once(tmp_path):
    run, export = tmp_path / "run", tmp_path / "export"
    (run / "loso").mkdir(parents=True)
    export.mkdir()
    (run / "summary.json").write_text(json.dumps({"internal_test": {"auroc": 0.497}}))
    (run / "loso" / "loso.md").write_text("| design | AUROC |\n|---|---|\n| x | 0.000 (0.00-0.00) |\n")
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(run / "loso" / "loso.png")
    (run / "config.yaml").write_text("quick: true\n")
    spec = WeightSpec("m-quick", "a", "diagnosis", ["x"], (8, 8), "none", "m-quick.pt", training={"smoke": True})
    spec.to_json(export / "m-quick.json")
    (export / "m-quick.pt").write_bytes(b"weights")
    marked = mark_smoke_run(run, export)
    assert len(marked) == 5 and mark_smoke_run(run, export) == []  # idempotent
    assert json.loads((run / "summary.json").read_text())["smoke_note"] == SMOKE_NOTE
    assert (run / "loso" / "loso.md").read_text().startswith("> **Smoke run (--quick)**")
    png = Image.open(run / "loso" / "loso.png")
    assert png.info["smoke_note"] == SMOKE_NOTE and png.size == (60, 40 + 28)
    assert (run / "config.yaml").read_text().startswith("# smoke run")
    assert WeightSpec.from_json(export / "m-quick.json").training["smoke_note"] == SMOKE_NOTE  # still a valid spec
    assert (export / "m-quick.pt").read_bytes() == b"weights"
