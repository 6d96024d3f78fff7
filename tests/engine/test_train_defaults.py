"""``covidcxr train``: shipped recipes as defaults, where exports may go, what a spec records (fast, no training)."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from covidcxr.cli import build_parser, main
from covidcxr.cli.train import command_of, config_path, train_config
from covidcxr.config import CONFIGS_DIR, DEFAULT_CONFIGS, config_hash, default_config_path, load_config
from covidcxr.engine.common.runs import check_export, command_line, export_name, provenance, recorded_command
from covidcxr.engine.diagnosis.train import HeadsConfig
from covidcxr.engine.lungs.train import SegTrainConfig
from covidcxr.engine.severity.train import SeverityConfig, export_names
from covidcxr.research.cnn_model import DiagTrainConfig, fit_temperature, temperature_at_bound
from covidcxr.specs import SHIPPED, WEIGHTS_DIR, shipped_spec_path

REPO_CONFIGS = CONFIGS_DIR  # the one configs folder: the package's
CLASSES = {"segmentation": SegTrainConfig, "diagnosis": HeadsConfig, "severity": SeverityConfig}


def _args(*words: str):
    return build_parser().parse_args(["train", *words])


def test_a_recipe_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from covidcxr.config import recipe_path

    monkeypatch.chdir(tmp_path)
    assert recipe_path("configs/severity.yaml") == CONFIGS_DIR / "severity.yaml"
    (tmp_path / "mine.yaml").write_text("epochs: 1\n")
    assert recipe_path("mine.yaml").resolve() == tmp_path / "mine.yaml"  # a file of the user's own wins
    with pytest.raises(FileNotFoundError, match="shipped recipes, usable by name: diagnosis.yaml"):
        recipe_path("configs/nope.yaml")


def test_every_default_recipe_ships_in_the_package():
    assert set(DEFAULT_CONFIGS.values()) <= {p.name for p in CONFIGS_DIR.glob("*.yaml")}
    assert (CONFIGS_DIR / "diagnosis_cnn.yaml").is_file()


@pytest.mark.parametrize("task", sorted(DEFAULT_CONFIGS))
def test_without_config_a_task_trains_its_shipped_recipe(task, tmp_path):
    args = _args(task, "--out", str(tmp_path / "run"))
    assert config_path(args) == default_config_path(task)
    cfg = train_config(args, CLASSES[task])
    expected = load_config(CLASSES[task], REPO_CONFIGS / f"{task}.yaml", [f"out_dir={tmp_path / 'run'}"])
    assert cfg == expected
    assert cfg.export_name in SHIPPED.values()  # the shipped recipes carry the shipped names


def test_the_default_diagnosis_recipe_is_the_source_blind_heads(tmp_path):
    args = _args("diagnosis", "--out", str(tmp_path))
    cfg = train_config(args, HeadsConfig)
    assert dataclasses.asdict(cfg) == {
        **dataclasses.asdict(HeadsConfig()),
        **load_config(HeadsConfig, REPO_CONFIGS / "diagnosis.yaml").__dict__,
        "out_dir": str(tmp_path),
    }
    assert cfg.design == "within_source" and cfg.features == "findings" and cfg.export_name == "source_blind_diagnosis"
    shipped = json.loads(shipped_spec_path("diagnosis").read_text())["training"]["config"]
    assert (shipped["design"], shipped["features"]) == (cfg.design, cfg.features)  # the recipe made the shipped model


def test_a_resumed_run_reads_its_own_config(tmp_path):
    (tmp_path / "config.yaml").write_text("epochs: 3\nexport_name: mine\n")
    args = _args("segmentation", "--out", str(tmp_path), "--resume")
    assert config_path(args) == tmp_path / "config.yaml"
    assert train_config(args, SegTrainConfig).epochs == 3


def test_quick_overrides_come_after_the_config_and_before_set(tmp_path):
    cfg = train_config(_args("segmentation", "--quick", "--set", "epochs=2"), SegTrainConfig)
    assert cfg.quick and cfg.limit == 24 and cfg.input_size == 64 and cfg.epochs == 2
    assert cfg.out_dir == "runs/segmentation-quick"
    heads = train_config(_args("diagnosis", "--quick", "--out", str(tmp_path)), HeadsConfig)
    assert heads.quick and heads.limit == 2 and heads.design == "within_source"
    cnn = train_config(
        _args("diagnosis", "--quick", "--config", str(REPO_CONFIGS / "diagnosis_cnn.yaml")), DiagTrainConfig
    )
    assert cnn.quick and cnn.limit == 24 and cnn.input_size == 64 and cnn.epochs == 1


def test_export_names_default_to_the_run_and_mark_smoke_runs(tmp_path):
    assert export_name("", "unet_mobilenetv2", tmp_path / "seg-a") == "unet_mobilenetv2-seg-a"
    assert export_name("unet_mobilenetv2_lungs", "unet_mobilenetv2", "runs/x") == "unet_mobilenetv2_lungs"
    assert export_name("unet_mobilenetv2_lungs", "x", "runs/x", quick=True) == "unet_mobilenetv2_lungs-quick"
    sev = load_config(SeverityConfig, None, [f"out_dir={tmp_path / 'sev'}"])
    assert export_names(sev) == ("unet_mobilenetv2_lesions-sev", "severity_linear-sev")
    shipped = load_config(SeverityConfig, REPO_CONFIGS / "severity.yaml")
    assert export_names(shipped) == (SHIPPED["lesions"], SHIPPED["severity"])


def test_exports_into_the_package_weights_or_over_a_shipped_spec_need_force(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="--force"):
        check_export(WEIGHTS_DIR, ["unet_mobilenetv2_lungs"], run)
    assert check_export(WEIGHTS_DIR, ["unet_mobilenetv2_lungs"], run, force=True) == WEIGHTS_DIR
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "source_blind_diagnosis.json").write_text("{}")
    with pytest.raises(ValueError, match="shipped model source_blind_diagnosis"):
        check_export(other, ["source_blind_diagnosis"], run)
    check_export(other, ["source_blind_diagnosis-quick", "mine"], run)  # other names are fine
    (run / "export").mkdir(parents=True)
    (run / "export" / "source_blind_diagnosis.json").write_text("{}")
    check_export(run / "export", ["source_blind_diagnosis"], run)  # a resumed run exports over its own files


def test_the_cli_refuses_the_package_weights_before_training(tmp_path, capsys):
    code = main(["train", "segmentation", "--out", str(tmp_path / "run"), "--export", str(WEIGHTS_DIR)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_the_command_line_is_rebuilt_from_the_arguments():
    args = _args("segmentation", "--out", "runs/a b", "--set", "epochs=2", "--quick", "--export", "w", "--force")
    assert command_of(args) == "covidcxr train segmentation --out 'runs/a b' --export w --set epochs=2 --quick --force"
    with recorded_command("covidcxr train x"):
        assert command_line() == "covidcxr train x"
        assert command_line("given") == "given"
    assert command_line() != "covidcxr train x"


def test_the_config_hash_is_the_sha256_of_sorted_json():
    import hashlib

    cfg = SegTrainConfig()
    data = dataclasses.asdict(cfg)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert (
        config_hash(cfg) == config_hash(dict(reversed(list(data.items())))) == hashlib.sha256(text.encode()).hexdigest()
    )
    assert config_hash({**data, "epochs": 13}) != config_hash(cfg)
    rec = provenance(data, "covidcxr train segmentation", quick=True)
    assert rec == {"command": "covidcxr train segmentation", "config_sha256": config_hash(data), "smoke": True}
    assert "smoke" not in provenance(data, "c")


def test_a_temperature_at_its_bound_is_flagged(caplog):
    labels = np.array([0, 1, 2] * 10)
    for logits, bound in ((np.eye(3)[labels] * 0.2, 0.05), (np.eye(3)[(labels + 1) % 3], 20.0)):
        # every image right (the NLL falls as T shrinks) or every image wrong (it falls as T grows)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="covidcxr.research.cnn_model"):
            t = fit_temperature(logits, labels)
        assert t == pytest.approx(bound) and temperature_at_bound(t)
        assert any("bound" in r.message for r in caplog.records)
    caplog.clear()
    rng = np.random.default_rng(0)
    noisy = np.eye(3)[labels] * 2.0 + rng.normal(0, 1.5, (30, 3))
    with caplog.at_level(logging.WARNING, logger="covidcxr.research.cnn_model"):
        t = fit_temperature(noisy, labels)
    assert not temperature_at_bound(t) and not caplog.records
    assert temperature_at_bound(20.0) and temperature_at_bound(0.0504) and not temperature_at_bound(0.06)


@pytest.mark.parametrize("design", ["source_erased"])
def test_a_loso_only_design_is_refused_before_any_feature_is_computed(design, tmp_path):
    from covidcxr.engine.diagnosis.train import HeadsConfig, train_heads

    with pytest.raises(ValueError, match="LOSO only"):
        train_heads(HeadsConfig(design=design, out_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()  # refused before the run folder, the features or a fit
