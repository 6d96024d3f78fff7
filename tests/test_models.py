"""The shared model tester: every registered architecture passes the same checks."""

from __future__ import annotations

import pytest
import torch

from covidcxr.models import create_model, eval_mode, list_models, model_task

IMAGE_MODELS = list_models("segmentation") + list_models(
    "classification"
)  # the gate reads feature vectors (tests/test_gate.py)


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 1, 97, 130)])
def test_forward_backward_every_parameter_gets_a_gradient(name, shape):
    torch.manual_seed(0)
    k = 1 if model_task(name) == "segmentation" else 3
    model = create_model(name, in_chans=1, num_classes=k)
    x = torch.randn(*shape)
    out = model(x)
    assert out.shape == ((shape[0], k, *shape[2:]) if model_task(name) == "segmentation" else (shape[0], k))
    out.mean().backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_save_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    a = create_model(name)
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = create_model(name)
    b.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x = torch.randn(2, 1, 64, 64)
    assert {"resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v2", "unet_mobilenetv2"} <= set(
        list_models()
    )
    with eval_mode(a, b), torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_unknown_model_lists_known_names():
    with pytest.raises(KeyError, match="unet_mobilenetv2"):
        create_model("unet_resnet9000")


def test_eval_mode_restores_training_state():
    m = create_model("unet_mobilenetv2")
    m.train()
    with eval_mode(m):
        assert not m.training
    assert m.training
    m.eval()
    with eval_mode(m):
        pass
    assert not m.training
