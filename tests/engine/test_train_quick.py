"""``covidcxr train <task> --quick`` end to end on the real data: the same kinds of files, each marked a smoke run.

About a minute each on 2 CPU cores (``train diagnosis --quick`` ~40 s with an empty cache), so they
run with ``-m integration`` (CI: .ci/run), not in the default suite.
"""

from __future__ import annotations

import json

import pytest

from covidcxr.cli import main
from covidcxr.models import load_weights

pytestmark = pytest.mark.integration


@pytest.fixture()
def cold_cache(tmp_path, monkeypatch):
    """An empty COVIDCXR_CACHE: nothing computed earlier is reused (lung masks, views, stage-2 features)."""
    monkeypatch.setenv("COVIDCXR_CACHE", str(tmp_path / "cache"))


def _spec(path, kind: str):
    _, spec = load_weights(path, kind=kind)  # the sha256 is checked
    assert spec.name.endswith("-quick") and spec.training["smoke"] is True
    assert spec.training["command"].startswith("covidcxr train ") and "--quick" in spec.training["command"]
    assert len(spec.training["config_sha256"]) == 64
    return spec


def test_train_segmentation_quick(tmp_path, cold_cache):
    run = tmp_path / "seg"
    assert main(["train", "segmentation", "--quick", "--out", str(run)]) == 0
    spec = _spec(run / "export" / "unet_mobilenetv2_lungs-quick.json", "lungs")
    assert spec.input_size == (64, 64) and spec.training["data"]["train_samples"] == 24
    assert spec.metrics["smoke"] is True  # the test metrics written into the spec say so too
    assert json.loads((run / "metrics.json").read_text())["smoke"] is True
    assert (run / "learning_curve.png").is_file() and (run / "val_overlays.png").is_file()
    ev = json.loads((run / "eval" / "segmentation_eval.json").read_text())  # evaluated without --export
    assert ev["smoke"] is True and ev["evaluated_weights"] == {
        "name": spec.name,
        "sha256": spec.sha256,
        "spec": str(run / "export" / "unet_mobilenetv2_lungs-quick.json"),
    }


def test_train_diagnosis_quick(tmp_path, cold_cache, capsys):
    """The shipped (source-blind heads) recipe, computing stage-2 features for its few images only."""
    from covidcxr.cli.smoke import SMOKE_BANNER, SMOKE_NOTE

    run = tmp_path / "diag"
    assert main(["train", "diagnosis", "--quick", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count(SMOKE_BANNER) == 2 and out.index(SMOKE_BANNER) < out.index("AUROC")  # before and after its numbers
    for path in run.rglob("*"):  # every file it wrote says so, but the weights (their spec does)
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            assert SMOKE_NOTE in (data.get("smoke_note"), data.get("training", {}).get("smoke_note")), path
        elif path.suffix == ".md":
            assert path.read_text().startswith("> **Smoke run (--quick)**"), path
        elif path.suffix == ".png":
            from PIL import Image

            assert Image.open(path).info.get("smoke_note") == SMOKE_NOTE, path
        else:
            assert path.is_dir() or path.suffix == ".pt", path
    spec = _spec(run / "export" / "source_blind_diagnosis-quick.json", "diagnosis")
    assert spec.training["config"]["design"] == "within_source" and spec.training["config"]["quick"] is True
    assert spec.training["data"]["train_samples"] < 40
    summary = json.loads((run / "summary.json").read_text())
    assert summary["smoke"] is True and (run / "loso" / "loso.md").is_file()
    assert len(list((tmp_path / "cache" / "stage2").glob("*.npz"))) == 2  # intact + lungs blacked out, few images


def test_train_diagnosis_cnn_quick(tmp_path, cold_cache):
    """The CNN recipe: lung masks and views of the limited samples only, then one epoch at 64 px."""
    from covidcxr.config import CONFIGS_DIR
    from covidcxr.research.__main__ import main as research_main

    run = tmp_path / "cnn"
    args = ["train-cnn", "--config", str(CONFIGS_DIR / "diagnosis_cnn.yaml"), "--quick", "--out", str(run)]
    assert research_main(args) == 0
    spec = _spec(run / "export" / "mobilenet_v2_diagnosis-quick.json", "diagnosis")
    assert spec.input_size == (64, 64) and isinstance(spec.training["temperature_at_bound"], bool)
    masks = list((tmp_path / "cache" / "lungs").rglob("*.png"))
    assert len(masks) == spec.training["data"]["train_samples"] + spec.training["data"]["val_samples"] <= 36
    assert json.loads((run / "metrics.json").read_text())["smoke"] is True


def test_train_severity_quick(tmp_path, cold_cache):
    run = tmp_path / "sev"
    assert main(["train", "severity", "--quick", "--out", str(run)]) == 0
    lesions = _spec(run / "export" / "unet_mobilenetv2_lesions-quick.json", "lesions")
    head = _spec(run / "export" / "severity_linear-quick.json", "severity")
    assert head.training["lesion_weights"] == lesions.sha256
    ev = json.loads((run / "severity_eval.json").read_text())
    assert ev["smoke"] is True and set(ev["evaluated_weights"]["lesion_folds"]) == {"0", "1"}


def test_train_gate_quick(tmp_path, cold_cache):
    run = tmp_path / "gate"
    assert main(["train", "gate", "--quick", "--out", str(run)]) == 0
    spec = _spec(run / "export" / "frontal_cxr_gate-quick.json", "gate")
    ev = json.loads((run / "gate_eval.json").read_text())
    assert ev["smoke"] is True and ev["evaluated_weights"]["sha256"] == spec.sha256
