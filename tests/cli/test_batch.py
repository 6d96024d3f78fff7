"""``covidcxr predict`` as a batch job: inputs (folders, globs, CSV), resume, DataLoader workers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from covidcxr.batch import expand_inputs, read_batches, read_csv_paths, read_predictions, unique_stems
from covidcxr.cli import main
from covidcxr.infer import Predictor

XRAYS = ("nih_00000710_003.png", "kermany_IM-0117-0001.jpeg", "ieee8023_2cd63b76.jpg")


@pytest.fixture(scope="module")
def pipe():
    return Predictor.load(saliency=False)


@pytest.fixture()
def predict(monkeypatch, pipe):
    """``covidcxr predict ARGS -q --no-saliency --no-report`` with the module's models, loaded once."""
    monkeypatch.setattr(Predictor, "load", staticmethod(lambda **_: pipe))

    def run(*args) -> int:
        return main(["predict", *map(str, args), "-q", "--no-saliency", "--no-report"])

    return run


@pytest.fixture()
def tree(tmp_path, fixtures):
    """in/a/x.png, in/b/x.jpeg, in/c/x.png, in/d/y.jpeg, in/e/z.jpg (real X-rays; three share the stem x) and a text file."""
    names = {"a/x.png": XRAYS[0], "b/x.jpeg": XRAYS[1], "c/x.png": XRAYS[0], "d/y.jpeg": XRAYS[1], "e/z.jpg": XRAYS[2]}
    for dst, src in names.items():
        (tmp_path / "in" / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixtures / src, tmp_path / "in" / dst)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    return tmp_path / "in"


def _rows(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _names(rows):
    """input file (relative to in/) -> output stem."""
    return {
        r["path"].split("/in/")[-1]: r["lung_mask"].rsplit("/", 1)[-1].removesuffix("_lungs.png")
        for r in rows
        if "error" not in r
    }


def test_inputs_expand_folders_globs_and_csv_in_a_stable_order(tree, tmp_path):
    files, errors = expand_inputs([str(tree / "c"), str(tree / "*/x.*"), str(tree / "a/x.png")])
    assert [f.split("/in/")[-1] for f in files] == [
        "c/x.png",
        "a/x.png",
        "b/x.jpeg",
    ]  # each file once, at its first place
    assert errors == []
    deep, _ = expand_inputs([str(tree / "**" / "x.*")])
    assert [f.split("/in/")[-1] for f in deep] == ["a/x.png", "b/x.jpeg", "c/x.png"]
    (tmp_path / "with_header.csv").write_text("label,path\n0,in/e/z.jpg\n1,\n1,in/a/x.png\n")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "bare.csv").write_text(f"../in/d/y.jpeg\n{tree / 'b' / 'x.jpeg'}\n")
    (tmp_path / "other_header.csv").write_text("filename,finding\nin/c/x.png,COVID-19\n")
    assert read_csv_paths(tmp_path / "with_header.csv") == [str(tmp_path / "in/e/z.jpg"), str(tmp_path / "in/a/x.png")]
    assert read_csv_paths(tmp_path / "lists" / "bare.csv") == [str(tree / "d/y.jpeg"), str(tree / "b/x.jpeg")]
    assert read_csv_paths(tmp_path / "other_header.csv") == [str(tmp_path / "in/c/x.png")]
    files, errors = expand_inputs([str(tree / "nothing*.png"), str(tree / "gone.png")], [tmp_path / "with_header.csv"])
    assert len(files) == 2 and [e[1].split(" ")[0] for e in errors] == ["pattern", "file"]
    with pytest.raises(FileNotFoundError, match="--csv"):
        expand_inputs([], [tmp_path / "nope.csv"])


def test_predict_reads_folders_globs_and_csv(predict, tree, tmp_path):
    (tmp_path / "list.csv").write_text("path,label\nin/d/y.jpeg,1\n")
    out = tmp_path / "out"
    assert predict(tree / "a", str(tree / "[bc]/*"), "--csv", tmp_path / "list.csv", "--out", out) == 0
    rows = _rows(out)
    assert [r["path"].split("/in/")[-1] for r in rows] == ["a/x.png", "b/x.jpeg", "c/x.png", "d/y.jpeg"]
    assert _names(rows) == {"a/x.png": "x", "b/x.jpeg": "x-2", "c/x.png": "x-3", "d/y.jpeg": "y"}
    assert all((out / f"{stem}_lungs.png").is_file() for stem in _names(rows).values())


def test_missing_file_and_unmatched_glob_are_error_rows_exit_2(predict, tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(tree / "a/x.png", tmp_path / "gone.png", str(tmp_path / "nothing/*.dcm"), "--out", out) == 2
    rows = {r["path"]: r for r in _rows(out)}
    assert len(rows) == 3 and "error" not in rows[str(tree / "a/x.png")]
    assert "file not found" in rows[str(tmp_path / "gone.png")]["error"]
    assert "pattern matches no file" in rows[str(tmp_path / "nothing/*.dcm")]["error"]
    assert "1 read, 2 failed" in capsys.readouterr().err


def test_resume_skips_done_inputs_and_keeps_their_names(predict, tree, tmp_path):
    out = tmp_path / "out"
    assert predict(tree / "a/x.png", tree / "c/x.png", tree / "d/y.jpeg", "--out", out) == 0
    first = (out / "predictions.jsonl").read_text()
    assert _names(_rows(out)) == {"a/x.png": "x", "c/x.png": "x-2", "d/y.jpeg": "y"}
    assert predict(tree, "--out", out) == 0  # all five, in folder order: b/x.jpeg and e/z.jpg are new
    rows = _rows(out)
    assert (out / "predictions.jsonl").read_text().startswith(first) and len(rows) == 5
    assert len({r["path"] for r in rows}) == 5
    assert _names(rows) == {"a/x.png": "x", "c/x.png": "x-2", "d/y.jpeg": "y", "b/x.jpeg": "x-3", "e/z.jpg": "z"}
    assert predict(tree, "--out", out) == 0 and len(_rows(out)) == 5  # nothing left to do


def test_killed_run_resumes_to_the_same_rows_and_names(predict, tree, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert predict(tree, "--out", whole) == 0
    assert predict(tree, "--out", killed, "--batch-size", "2") == 0
    lines = (killed / "predictions.jsonl").read_text().splitlines(keepends=True)
    (killed / "predictions.jsonl").write_text("".join(lines[:2]) + lines[2][:40])  # killed while writing row 3
    assert read_predictions(killed / "predictions.jsonl").stems.keys() == {
        json.loads(line)["path"] for line in lines[:2]
    }
    assert (killed / "predictions.jsonl").read_text() == "".join(lines[:2])  # the partial line is gone
    assert predict(tree, "--out", killed) == 0
    rows = _rows(killed)
    assert len(rows) == 5 and _names(rows) == _names(_rows(whole))
    probs = {(r["path"], c): p for r in rows for c, p in r["probabilities"].items()}
    assert probs == pytest.approx(
        {(r["path"], c): p for r in _rows(whole) for c, p in r["probabilities"].items()}, abs=1e-5
    )


def test_overwrite_starts_afresh(predict, tree, tmp_path):
    out = tmp_path / "out"
    assert predict(tree, "--out", out) == 0
    assert predict(tree / "e/z.jpg", "--out", out, "--overwrite") == 0
    (row,) = _rows(out)
    assert row["path"].endswith("e/z.jpg") and row["lung_mask"].endswith("/z_lungs.png")


def test_error_rows_are_kept_unless_retry_errors(predict, tree, tmp_path, fixtures):
    out = tmp_path / "out"
    bad = tree / "f" / "w.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert predict(tree / "a", tree / "f", "--out", out) == 2
    shutil.copy(fixtures / XRAYS[0], bad)  # fixed since
    assert predict(tree / "a", tree / "f", "--out", out) == 2  # the error row is kept: still counts as failed
    assert len(_rows(out)) == 2
    assert predict(tree / "a", tree / "f", "--out", out, "--retry-errors") == 0
    rows = _rows(out)
    assert len(rows) == 2 and all("error" not in r for r in rows)


def test_workers_give_the_same_rows_and_bad_files_become_error_rows(predict, tree, tmp_path):
    (tree / "f").mkdir()
    (tree / "f" / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.full((300, 300), 7, np.uint8)).save(tree / "f" / "blank.png")
    rows = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        assert predict(tree, "--out", out, "--workers", workers, "--batch-size", 3) == 2
        rows[workers] = _rows(out)
    assert [r["path"] for r in rows[0]] == [r["path"] for r in rows[2]] and len(rows[0]) == 7
    for a, b in zip(rows[0], rows[2]):
        assert a.get("probabilities") == b.get("probabilities") and a.get("error") == b.get("error")
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in rows[2] if "error" in r}
    assert set(errors) == {"broken.png", "blank.png"} and "not an image" in errors["broken.png"]


def test_read_batches_in_workers_turns_read_errors_into_items(tmp_path, fixtures):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff truncated")
    files = [fixtures / XRAYS[2], tmp_path / "bad.jpg", tmp_path / "missing.png"]
    (batch,) = list(read_batches(files, batch_size=4, workers=2))
    assert [i for i, _, _ in batch] == [0, 1, 2]
    assert batch[0][1].ndim == 2 and batch[0][2] is None
    assert batch[1][1] is None and "bad.jpg" in batch[1][2] and "not found" in batch[2][2]


def test_unique_stems_are_deterministic_and_respect_reserved_names():
    files = ["a/x.png", "b/x.png", "c/x-2.png", "d/x.jpeg", "e/y.png"]
    names = unique_stems(files)
    assert names == ["x", "x-2", "x-2-2", "x-3", "y"] and len(set(names)) == len(names)
    for k in range(len(files) + 1):  # resuming after any prefix gives the names of one uninterrupted run
        assert unique_stems(files, dict(zip(files[:k], names[:k]))) == names
    assert unique_stems(["z/x.png", "a/x.png"], {"a/x.png": "x"}) == [
        "x-2",
        "x",
    ]  # a name written before is never reused


def test_a_corrupt_complete_line_is_an_error_not_silently_skipped(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"path": "a.png", "error": "a.png: x"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_predictions(tmp_path / "predictions.jsonl")


def test_resuming_with_other_weights_is_refused(predict, tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(tree / "a/x.png", "--out", out) == 0
    row = _rows(out)[0] | {"model": {"lungs": {"name": "older", "sha256": "0" * 64}}}
    (out / "predictions.jsonl").write_text(json.dumps(row) + "\n")
    assert predict(tree / "e/z.jpg", "--out", out) == 2
    assert "other weights" in capsys.readouterr().err and len(_rows(out)) == 1


def test_resume_matches_inputs_however_their_path_is_spelled(predict, tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert predict("in/a", "in/d", "--out", out) == 0
    first = _rows(out)
    assert predict(tree / "a", "./in/d/../d", "--out", out) == 0  # absolute, and with a detour
    assert _rows(out) == first
    assert predict(tree, "--out", out) == 0  # three new inputs; the two done keep their names
    rows = _rows(out)
    assert len(rows) == 5 and len({r["lung_mask"] for r in rows}) == 5
    masks = {r["path"]: r["lung_mask"].rsplit("/", 1)[-1] for r in rows}
    assert masks["in/a/x.png"] == "x_lungs.png" and masks["in/d/y.jpeg"] == "y_lungs.png"


def test_broken_spec_json_names_the_file_and_empty_out_is_refused(tmp_path, capsys):
    spec = tmp_path / "lungs.json"
    spec.write_text('{"arch": ')
    assert main(["predict", "--out", str(tmp_path / "o"), "--lung-weights", str(spec), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"error: {spec}: not a weights spec: broken JSON" in err and "Traceback" not in err
    assert main(["predict", "--out", "", "-q"]) == 2
    assert capsys.readouterr().err.startswith("error: --out is empty; pass a folder you can write to")
