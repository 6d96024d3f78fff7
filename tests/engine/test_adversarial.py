"""Adversarial lung segmentation: the PatchGAN, the adversarial step and run, the plain path, the paired comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from covidcxr.cli import main as cli_main
from covidcxr.config import load_config
from covidcxr.data.masks import IGNORE, LUNG
from covidcxr.engine import adversarial
from covidcxr.engine import segmentation as seg
from covidcxr.engine.evaluate_segmentation import compare_segmentation
from covidcxr.models import create_model, eval_mode, list_models, load_weights, save_weights, shipped_spec_path

# ---------------------------------------------------------------------------
# The discriminator (the shared model tester's checks, for (image, mask) pairs)


@pytest.mark.parametrize("shape", [(1, 2, 64, 64), (1, 2, 97, 130)])
def test_patchgan_forward_backward_every_parameter_gets_a_gradient(shape):
    torch.manual_seed(0)
    disc = create_model("patchgan", in_chans=1, num_classes=1)
    out = disc(torch.randn(*shape))
    assert out.shape[:2] == (1, 1) and out.shape[2] == shape[2] // 8 - 2 and out.shape[3] == shape[3] // 8 - 2
    out.mean().backward()
    missing = [
        n
        for n, p in disc.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0
    ]
    assert not missing


def test_patchgan_is_pix2pix_70x70_and_round_trips(tmp_path):
    assert list_models("discriminator") == ["patchgan"]
    assert "patchgan" not in list_models("segmentation")  # the segmentation tester expects full-size logits
    torch.manual_seed(0)
    a = create_model("patchgan", base_channels=8)
    assert a.receptive_field() == 70
    assert create_model("patchgan", n_layers=2).receptive_field() == 34
    torch.save(a.state_dict(), tmp_path / "d.pt")
    b = create_model("patchgan", base_channels=8)
    b.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    x = torch.randn(2, 2, 64, 64)
    with eval_mode(a, b), torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="at least 32x32"):
        a(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="no pretrained"):
        create_model("patchgan", pretrained="imagenet")


# ---------------------------------------------------------------------------
# One adversarial step


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, 1, size, size, generator=g)
    target = torch.zeros(n, size, size, dtype=torch.long)
    target[:, 16:48, 8:28] = LUNG
    target[:, 16:48, 36:56] = LUNG
    target[:, 20:30, 40:50] = IGNORE  # a pacemaker painted over a lung
    return image, target


def _params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.named_parameters()}


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_adversarial_step_updates_both_networks(amp):
    torch.manual_seed(0)
    cfg = seg.SegTrainConfig()
    model = create_model("unet_mobilenetv2")
    disc, d_opt = adversarial.build_discriminator(cfg, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before_g, before_d = _params(model), _params(disc)
    image, target = _batch()
    out = adversarial.adversarial_step(model, disc, image, target, opt, d_opt, adv_weight=cfg.adv_weight, amp=amp)
    assert set(out) == {"loss", "g_adv", "d_loss"} and all(math.isfinite(v) and v > 0 for v in out.values())
    after_g, after_d = _params(model), _params(disc)
    assert sum(not torch.equal(before_g[k], after_g[k]) for k in before_g) > 0.9 * len(before_g)
    assert all(not torch.equal(before_d[k], after_d[k]) for k in before_d)
    assert all(p.requires_grad for p in disc.parameters())  # frozen only during the U-Net update


class _FreeLogits(nn.Module):
    """A 'segmentation model' whose logits are its parameter: gradients per pixel can be read off."""

    def __init__(self, n, size):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(n, 1, size, size) * 0.1)

    def forward(self, x):
        return self.logits + 0 * x


def test_ignore_pixels_carry_no_gradient_and_the_adversarial_term_adds_one():
    torch.manual_seed(0)
    image, target = _batch()
    ignore = (target == IGNORE)[:, None]
    grads = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        model = _FreeLogits(*image.shape[::3])
        disc = create_model("patchgan", base_channels=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        d_opt = torch.optim.SGD(
            disc.parameters(), lr=0.0
        )  # the discriminator stays as built: both runs see the same one
        adversarial.adversarial_step(model, disc, image, target, opt, d_opt, adv_weight=weight)
        grads[weight] = model.logits.grad.clone()
    for g in grads.values():
        assert torch.count_nonzero(g[ignore]) == 0
        assert torch.count_nonzero(g[~ignore]) > 0.9 * (~ignore).sum()
    assert not torch.allclose(grads[0.0], grads[10.0])  # the adversarial term reaches the U-Net


# ---------------------------------------------------------------------------
# Training runs


def _cfg(out, epochs=2, *extra):
    return load_config(
        seg.SegTrainConfig,
        None,
        [f"out_dir={out}", f"epochs={epochs}", "limit=8", "input_size=64", "batch_size=4", "threads=2", *extra],
    )


@pytest.fixture(scope="module")
def adv_run(tmp_path_factory):
    return seg.main(_cfg(tmp_path_factory.mktemp("adv") / "run", 2, "adversarial=true", "disc_channels=16"))


@pytest.mark.integration
def test_adversarial_run_exports_a_spec_that_says_so(adv_run):
    ckpt = torch.load(adv_run / "checkpoint.pt", weights_only=True)
    assert {"disc", "disc_optimizer"} <= set(ckpt) and ckpt["disc"]["net.0.weight"].shape[0] == 16
    for h in ckpt["history"]:
        assert math.isfinite(h["d_loss"]) and math.isfinite(h["g_adv"]) and h["d_loss"] > 0
    (spec_path,) = (adv_run / "export").glob("*.json")  # named after the run (no config names it)
    assert spec_path.name == "unet_mobilenetv2-run.json"
    _, spec = load_weights(spec_path)
    assert spec.training["config"]["adversarial"] is True
    assert spec.training["config"]["adv_weight"] == seg.SegTrainConfig.adv_weight
    assert spec.training["command"]  # the command line that ran (here: pytest's)
    exported = torch.load(spec_path.with_suffix(".pt"), weights_only=True)
    assert set(exported) == set(create_model("unet_mobilenetv2").state_dict())  # the U-Net alone ships


@pytest.mark.integration
def test_adversarial_run_resumes_to_the_same_result(adv_run, tmp_path, monkeypatch):
    part = tmp_path / "part"
    cfg = _cfg(part, 2, "adversarial=true", "disc_channels=16")
    real = adversarial.train_one_epoch

    def killed_in_second_epoch(*args, **kwargs):
        if args[8] == 1:  # epoch index
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(adversarial, "train_one_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        seg.main(cfg)
    monkeypatch.setattr(adversarial, "train_one_epoch", real)
    with pytest.raises(ValueError, match="adversarial"):
        seg.main(_cfg(part, 2), resume=True)  # the same folder resumed without the discriminator
    seg.main(cfg, resume=True)
    a = torch.load(adv_run / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for key in ("model", "disc"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0, msg=f"{key}.{k}")
    assert [h["d_loss"] for h in a["history"]] == [h["d_loss"] for h in b["history"]]


@pytest.mark.integration
def test_plain_path_is_unchanged_by_the_adversarial_settings(tmp_path):
    a = seg.main(_cfg(tmp_path / "a", 1))
    b = seg.main(_cfg(tmp_path / "b", 1, "adv_weight=0.9", "disc_lr=0.1", "disc_channels=8", "disc_layers=2"))
    ca = torch.load(a / "checkpoint.pt", weights_only=True)
    cb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert set(ca) == {"model", "optimizer", "scheduler", "epoch", "history", "best", "config"}
    assert "d_loss" not in ca["history"][0] and "g_adv" not in ca["history"][0]
    for k in ca["model"]:
        torch.testing.assert_close(ca["model"][k], cb["model"][k], rtol=0, atol=0, msg=k)


def test_cli_adversarial_flag_sets_the_config(monkeypatch, tmp_path):
    seen = {}

    def fake_main(cfg, resume=False, export_dir=None):
        seen["cfg"] = cfg
        return tmp_path

    monkeypatch.setattr(seg, "main", fake_main)
    assert (
        cli_main(["train", "segmentation", "--adversarial", "--out", str(tmp_path / "r"), "--set", "adv_weight=0.1"])
        == 0
    )
    assert seen["cfg"].adversarial is True and seen["cfg"].adv_weight == 0.1
    assert cli_main(["train", "segmentation", "--out", str(tmp_path / "r")]) == 0
    assert seen["cfg"].adversarial is False


# ---------------------------------------------------------------------------
# Paired comparison


def _perturbed_copy(directory):
    """The shipped lung model with its last layer's bias raised: more lung pixels, a different Dice."""
    model, spec = load_weights(shipped_spec_path("lungs"))
    head = model.net.segmentation_head[0]
    with torch.no_grad():
        head.bias += 2.0
    spec.name, spec.file, spec.metrics = "perturbed", "perturbed.pt", {}
    return save_weights(model, spec, directory)


@pytest.mark.integration
def test_comparison_with_itself_is_exactly_zero_and_with_a_perturbed_copy_is_not(tmp_path, data_root, capsys):
    shipped = shipped_spec_path("lungs")
    out = tmp_path / "same"
    assert (
        cli_main(
            [
                "evaluate",
                "segmentation",
                "--compare",
                str(shipped),
                str(shipped),
                "--split",
                "val",
                "--limit",
                "1",
                "--data-root",
                str(data_root),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "Dice B − A" in capsys.readouterr().out
    same = json.loads((out / "comparison.json").read_text())
    assert (out / "comparison.md").is_file() and (out / "comparison.png").is_file()
    assert {"v7labs", "kermany-v7labs", "all_manual"} <= set(same["per_source"])
    assert "lungvae" not in same["per_source"]  # model-generated masks are no ground truth
    for res in same["per_source"].values():
        for m in ("dice_diff", "hd95_diff"):
            assert (res[m]["value"], res[m]["ci_low"], res[m]["ci_high"]) == (0.0, 0.0, 0.0)
        assert res["dice_a"] == res["dice_b"] and res["n"] > 0

    perturbed = _perturbed_copy(tmp_path / "w")
    res = compare_segmentation(shipped, perturbed, data_root=data_root, split="val", out_dir=tmp_path / "diff", limit=1)
    pooled = res["per_source"]["all_manual"]
    rows = json.loads((tmp_path / "diff" / "comparison.json").read_text())["per_image"]
    assert pooled["n"] == len(rows) == same["per_source"]["all_manual"]["n"]
    assert pooled["dice_diff"]["value"] != 0
    assert pooled["dice_diff"]["value"] == pytest.approx(np.mean([r["dice_b"] - r["dice_a"] for r in rows]))
    assert pooled["dice_diff"]["value"] == pytest.approx(pooled["dice_b"]["value"] - pooled["dice_a"]["value"])
    assert pooled["dice_diff"]["ci_low"] <= pooled["dice_diff"]["value"] <= pooled["dice_diff"]["ci_high"]
    assert (
        pooled["dice_a"]["value"] == same["per_source"]["all_manual"]["dice_a"]["value"]
    )  # the same images, the same A


def test_comparison_refuses_a_spec_that_is_not_a_lung_model(tmp_path):
    with pytest.raises(ValueError, match="lung-segmentation"):
        compare_segmentation(shipped_spec_path("lesions"), shipped_spec_path("lungs"), out_dir=tmp_path)
    assert (
        cli_main(
            [
                "evaluate",
                "segmentation",
                "--compare",
                str(shipped_spec_path("lungs")),
                str(shipped_spec_path("diagnosis")),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
