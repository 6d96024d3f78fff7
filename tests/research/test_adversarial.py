"""Adversarial lung segmentation: the PatchGAN, the adversarial step and run, the plain path, the paired comparison."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from covidcxr.config import load_config
from covidcxr.data.masks import IGNORE, LUNG
from covidcxr.engine.lungs import train as seg
from covidcxr.models import create_model, eval_mode, list_models, load_weights
from covidcxr.research import adversarial

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
    cfg = adversarial.AdversarialConfig()
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


def _cfg(out, epochs=2, *extra, cls=adversarial.AdversarialConfig):
    return load_config(
        cls,
        None,
        [f"out_dir={out}", f"epochs={epochs}", "limit=8", "input_size=64", "batch_size=4", "threads=2", *extra],
    )


@pytest.fixture(scope="module")
def adv_run(tmp_path_factory):
    return adversarial.main(_cfg(tmp_path_factory.mktemp("adv") / "run", 2, "disc_channels=16"))


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
    assert spec.training["config"]["adv_weight"] == adversarial.AdversarialConfig.adv_weight
    assert spec.training["command"]  # the command line that ran (here: pytest's)
    exported = torch.load(spec_path.with_suffix(".pt"), weights_only=True)
    assert set(exported) == set(create_model("unet_mobilenetv2").state_dict())  # the U-Net alone ships


@pytest.mark.integration
def test_adversarial_run_resumes_to_the_same_result(adv_run, tmp_path, monkeypatch):
    part = tmp_path / "part"
    cfg = _cfg(part, 2, "disc_channels=16")
    real = adversarial.train_one_epoch

    def killed_in_second_epoch(*args, **kwargs):
        if args[8] == 1:  # epoch index
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(adversarial, "train_one_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        adversarial.main(cfg)
    monkeypatch.setattr(adversarial, "train_one_epoch", real)
    adversarial.main(cfg, resume=True)
    a = torch.load(adv_run / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    for key in ("model", "disc"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0, msg=f"{key}.{k}")
    assert [h["d_loss"] for h in a["history"]] == [h["d_loss"] for h in b["history"]]


@pytest.mark.integration
def test_the_product_trainer_has_no_adversarial_settings(tmp_path):
    assert not hasattr(seg.SegTrainConfig, "adv_weight")
    ca = torch.load(seg.main(_cfg(tmp_path / "a", 1, cls=seg.SegTrainConfig)) / "checkpoint.pt", weights_only=True)
    assert set(ca) == {"model", "optimizer", "scheduler", "epoch", "history", "best", "config"}
    assert "d_loss" not in ca["history"][0] and "g_adv" not in ca["history"][0]
