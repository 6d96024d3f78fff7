"""Training loop: a one-batch overfit, and a killed run resumed to the same result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from covidcxr.config import config_hash, load_config
from covidcxr.data.masks import read_mask
from covidcxr.data.segmentation import SegmentationDataset
from covidcxr.data.splits import SPLIT_VERSION
from covidcxr.engine.lungs.train import SegTrainConfig, evaluate, main, train_one_epoch
from covidcxr.models import create_model, load_weights


def _fixture_dataset(fixtures, size=64):
    samples = [
        {
            "path": str(fixtures / "ieee8023_2cd63b76.jpg"),
            "mask_path": str(fixtures / "ieee8023_2cd63b76_lungs-v7labs.png"),
            "mask_source": "v7labs",
            "patient_id": "a",
        },
        {
            "path": str(fixtures / "kermany_IM-0117-0001.jpeg"),
            "mask_path": str(fixtures / "kermany_IM-0117-0001_lungs-v7labs.png"),
            "mask_source": "kermany-v7labs",
            "patient_id": "b",
        },
    ]
    return SegmentationDataset(samples, (size, size), progress=False)


@pytest.mark.integration
def test_one_batch_overfit(fixtures):
    torch.manual_seed(0)
    ds = _fixture_dataset(fixtures)
    loader = DataLoader(ds, batch_size=2)
    model = create_model("unet_mobilenetv2")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    before = evaluate(model, loader)
    for epoch in range(60):
        loss = train_one_epoch(model, loader, opt, sched, "bf16", epoch, torch.device("cpu"))
    after = evaluate(model, loader)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["dice"] > 0.85, after
    assert loss < 0.5


def _cfg(out, epochs):
    return load_config(
        SegTrainConfig,
        None,
        [f"out_dir={out}", f"epochs={epochs}", "limit=8", "input_size=64", "batch_size=4", "threads=2"],
    )


@pytest.mark.integration
def test_resume_continues_a_killed_run_to_the_same_result(tmp_path, monkeypatch):
    import pytest

    from covidcxr.engine.lungs import train as seg

    full = main(_cfg(tmp_path / "full", 2))
    part = tmp_path / "part"
    real = seg.train_one_epoch

    def killed_in_second_epoch(*args, **kwargs):
        if args[5] == 1:  # epoch index
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(seg, "train_one_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(_cfg(part, 2))
    assert torch.load(part / "checkpoint.pt", weights_only=True)["epoch"] == 0
    monkeypatch.setattr(seg, "train_one_epoch", real)
    main(_cfg(part, 2), resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    hist = json.loads((part / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    for name in (
        "config.yaml",
        "metrics.json",
        "learning_curve.png",
        "val_overlays.png",
        "export/unet_mobilenetv2-full.json",  # no export_name in the config: <model>-<run folder name>
    ):
        assert (full / name).is_file(), name
    model, spec = load_weights(full / "export" / "unet_mobilenetv2-full.json")
    assert spec.input_size == (64, 64) and spec.training["data"]["split_version"] == SPLIT_VERSION == "v2"
    assert np.isfinite(spec.training["val_dice"])
    assert spec.name == "unet_mobilenetv2-full" and "smoke" not in spec.training
    assert spec.training["config_sha256"] == config_hash(spec.training["config"])
    assert spec.training["command"]  # this process's command line (the cli passes its own)
    # resumed: the same weights (the files' sha256 differ: torch.save writes the file's name into it)
    resumed, _ = load_weights(part / "export" / "unet_mobilenetv2-part.json")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, resumed.state_dict()[k], rtol=0, atol=0, msg=k)


def test_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    import pytest

    with pytest.raises(FileExistsError, match="--resume"):
        main(_cfg(tmp_path / "run", 1))


def test_mask_fixture_has_ignore_free_lungs(fixtures):
    m = read_mask(str(fixtures / "ieee8023_2cd63b76_lungs-v7labs.png"), "v7labs")
    assert 0.15 < (m == 1).mean() < 0.6
