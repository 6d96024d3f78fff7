"""The shared model tester: every registered architecture passes the same checks."""

from __future__ import annotations

import pytest
import torch

from covidcxr.models import create_model, eval_mode, list_models, model_task
from covidcxr.research import discriminator  # noqa: F401  (registers patchgan: the research designs are tested too)

ALL = list_models()
#: Arguments an architecture needs besides the defaults.
KWARGS = {"source_blind_heads": {"num_classes": 3}}


def _example(name: str, model: torch.nn.Module, shape: tuple[int, ...] = (2, 1, 64, 64)) -> tuple:
    """One input batch each registered architecture takes, by its task."""
    task, (n, _, h, w) = model_task(name), shape
    if task in ("segmentation", "classification"):
        return (torch.randn(*shape),)
    if task == "discriminator":
        return (torch.randn(n, 2, h, w),)  # image and mask of the segmentation model it judges
    if task == "lesions":
        encoder = create_model("unet_mobilenetv2").net.encoder
        return (encoder(torch.randn(n, 1, 64, 64)),)
    if task == "severity":
        return torch.randn(n, model.image_in), torch.randn(n, 6, model.zone.in_features)
    if task == "gate":
        return (torch.randn(n, model.linear.in_features),)
    if task == "diagnosis_heads":
        return torch.randn(n, 1, 64, 64), torch.rand(n, 1, 2, 2), torch.rand(n, model.n_facts)
    raise AssertionError(f"{name}: task {task!r} has no example input here; add one")


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, **KWARGS.get(name, {}))
    outs = _outputs(model(*_example(name, model)))
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.float().mean() for o in outs).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, f"{name} has no trainable parameter"
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]


@pytest.mark.parametrize("name", [n for n in ALL if model_task(n) in ("segmentation", "classification")])
@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 1, 97, 130)])
def test_image_models_take_any_size(name, shape):
    torch.manual_seed(0)
    k = 1 if model_task(name) == "segmentation" else 3
    out = create_model(name, in_chans=1, num_classes=k)(torch.randn(*shape))
    assert out.shape == ((shape[0], k, *shape[2:]) if model_task(name) == "segmentation" else (shape[0], k))


@pytest.mark.parametrize("name", ALL)
def test_save_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    a = create_model(name, **KWARGS.get(name, {}))
    torch.save(a.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)  # b starts from other random weights
    b = create_model(name, **KWARGS.get(name, {}))
    b.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x = _example(name, a)
    with eval_mode(a, b), torch.no_grad():
        for oa, ob in zip(_outputs(a(*x)), _outputs(b(*x)), strict=True):
            assert torch.equal(oa, ob)


def test_the_registry_holds_every_architecture_the_project_names():
    assert {
        "resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v2", "unet_mobilenetv2",
        "severity_linear", "frontal_gate", "source_blind_heads", "patchgan",
    } <= set(ALL)  # fmt: skip


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
