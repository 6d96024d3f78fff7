"""What a new user meets on the edges of ``covidcxr predict``: usage, progress, throughput, reruns (onnxruntime: fast)."""

from __future__ import annotations

import shutil

import pytest

from covidcxr.cli import SAMPLE, main


def test_unknown_option_prints_the_commands_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--fast", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "usage: covidcxr predict" in err and "unrecognized arguments: --fast" in err
    assert "{segment,predict" not in err  # not the list of commands


def test_missing_file_reports_no_throughput(tmp_path, capsys):
    assert (
        main(["predict", str(tmp_path / "none.png"), "--out", str(tmp_path / "o"), "-q", "--backend", "onnxruntime"])
        == 2
    )
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 failed" in summary and "images/s" not in summary and "onnxruntime" in summary


def test_rerun_says_what_it_skips(tmp_path, capsys):
    argv = [str(SAMPLE), "--out", str(tmp_path / "o"), "-q", "--no-report", "--backend", "onnxruntime"]
    assert main(["predict", *argv]) == 0
    capsys.readouterr()
    assert main(["predict", *argv]) == 0
    err = capsys.readouterr().err
    assert "skipping 1 of 1 inputs already in" in err and "--overwrite" in err
    assert "images/s" not in err.splitlines()[-1]


def test_progress_bar_counts_images_not_batches(tmp_path, monkeypatch):
    import covidcxr.predict as predict_module
    from covidcxr.batch import RunCounts
    from covidcxr.infer import Predictor

    bars = []

    class Bar(predict_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(predict_module, "tqdm", Bar)
    inputs = [tmp_path / f"x{i}.jpg" for i in range(3)]
    for path in inputs:
        shutil.copy(SAMPLE, path)
    counts = RunCounts()
    rows = predict_module.predict_files(
        [str(p) for p in inputs] + [str(tmp_path / "missing.png")],
        tmp_path / "o",
        Predictor.load(backend="onnxruntime", saliency=False, severity=False),
        batch_size=8,
        report=False,
        counts=counts,
    )
    seen = []
    for _ in rows:
        seen.append(bars[0].n)
        assert bars[0].n == counts.done + counts.failed  # one step per image, as its row is written
    assert seen == [1, 2, 3, 4] and bars[0].total == 4
