from __future__ import annotations

import pytest

from covidcxr.config import load_config, save_config
from covidcxr.engine.lungs.train import SegTrainConfig


def test_yaml_then_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nlr: 0.01\npretrained: null\n")
    cfg = load_config(
        SegTrainConfig, tmp_path / "c.yaml", ["epochs=5", "amp=none", "pretrained=imagenet", "data_root=none"]
    )
    assert (
        cfg.epochs == 5
        and cfg.lr == 0.01
        and cfg.amp == "none"
        and cfg.pretrained == "imagenet"
        and cfg.data_root is None
    )
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(SegTrainConfig, tmp_path / "out.yaml") == cfg


def test_bad_keys_and_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'epoch'"):
        load_config(SegTrainConfig, None, ["epoch=3"])
    with pytest.raises(ValueError, match="epochs"):
        load_config(SegTrainConfig, None, ["epochs=three"])
    (tmp_path / "c.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(SegTrainConfig, tmp_path / "c.yaml")
