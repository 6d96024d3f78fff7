"""``covidcxr predict``'s output: stdout carries only the result lines, stderr the errors, warnings and summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from covidcxr.batch import RunCounts
from covidcxr.cli import main
from covidcxr.cli.inference import result_line, run_summary

PROBS = {"COVID-19": 0.7, "Other pneumonia": 0.2, "No finding": 0.1}
ROWS = [
    {"path": "a.png", "prediction": "COVID-19", "probabilities": PROBS, "warnings": [], "uncertain": False},
    {
        "path": "b.png",
        "prediction": "No finding",
        "probabilities": PROBS,
        "warnings": ["small lung field"],
        "uncertain": True,
        "uncertain_reason": "low top probability",
    },
    {"path": "c.png", "error": "c.png: a lateral view, not a frontal chest X-ray", "refusal_reason": "lateral"},
    {"path": "d.png", "error": "d.png: a CT slice", "refusal_reason": "ct"},
    {"path": "e.png", "error": "e.png: not an image"},
]


@pytest.fixture()
def fake_run(monkeypatch):
    """``predict`` with no models: Predictor.load returns a stand-in and predict_files yields ROWS."""

    def predict_files(inputs, out, predictor, *, counts, **_):
        counts.inputs, counts.skipped, counts.skipped_errors = len(ROWS) + 2, 2, 1
        for row in ROWS:
            if "error" in row:
                counts.failed += 1
            else:
                counts.done += 1
            counts.decoded += "error" not in row or "refusal_reason" in row  # went through the models
            yield row

    monkeypatch.setattr("covidcxr.infer.Predictor.load", staticmethod(lambda **_: object()))
    monkeypatch.setattr("covidcxr.predict.predict_files", predict_files)


def test_stdout_is_one_result_line_per_image_and_stderr_the_rest(fake_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", "x.png", "--out", str(out), "-q"]) == 2  # errors and skipped errors: exit 2 as before
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "a.png\tCOVID-19\t[COVID-19 70.0%  Other pneumonia 20.0%  No finding 10.0%]",
        "b.png\tNo finding\t[COVID-19 70.0%  Other pneumonia 20.0%  No finding 10.0%]\tuncertain: low top probability",
    ]
    err = captured.err.splitlines()
    assert err[:-1] == [
        f"skipping 2 of 7 inputs already in {out / 'predictions.jsonl'} (--overwrite reads them again; "
        "1 of them are errors: --retry-errors runs those again)",
        "warning: b.png: small lung field",
        "error: c.png: a lateral view, not a frontal chest X-ray",
        "error: d.png: a CT slice",
        "error: e.png: not an image",
    ]
    summary = err[-1]
    assert re.fullmatch(
        r"2 read, 2 refused \(1 ct, 1 lateral\), 1 failed, 2 skipped \(already in predictions.jsonl; "
        r"1 of them errors: --retry-errors runs them again\), \d+\.\d images/s; results: .*predictions.jsonl",
        summary,
    ), summary
    assert summary.endswith(str(Path(out) / "predictions.jsonl"))


def test_result_line_marks_uncertain_readings():
    assert result_line(ROWS[0]).split("\t")[:2] == ["a.png", "COVID-19"] and result_line(ROWS[0]).count("\t") == 2
    assert result_line(ROWS[1]).endswith("\tuncertain: low top probability")
    assert result_line({**ROWS[0], "uncertain": None}).count("\t") == 2  # a spec without the rule: no mark


def test_summary_without_refusals_or_skips():
    counts = RunCounts(done=1, failed=2, decoded=3)
    assert (
        run_summary(counts, 2.0, Path("o/predictions.jsonl"))
        == "1 read, 2 failed, 1.5 images/s; results: o/predictions.jsonl"
    )
    assert (
        run_summary(counts, 2.0, Path("o/predictions.jsonl"), "onnxruntime")
        == "1 read, 2 failed, 1.5 images/s on onnxruntime; results: o/predictions.jsonl"
    )
    counts = RunCounts(done=12, failed=3, refused={"lateral": 1, "ct": 1})
    summary = run_summary(counts, 0.0, Path("p"))  # nothing went through the models: no throughput
    assert summary.startswith("12 read, 2 refused (1 ct, 1 lateral), 1 failed; results") and "images/s" not in summary


def test_result_line_names_the_category_and_every_reason():
    row = {
        **ROWS[0],
        "category": {"code": "typical", "label": "Typical appearance", "reasons": [], "cannot_see": ""},
        "uncertain": True,
        "uncertain_reasons": [{"code": "low_resolution", "text": "low"}, {"code": "lung_outline", "text": "odd"}],
    }
    assert result_line(row).split("\t")[3:] == ["Typical appearance", "uncertain: low; odd"]
