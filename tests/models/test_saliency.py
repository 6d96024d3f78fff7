"""Grad-CAM maps, their placement on the X-ray and the share inside the lungs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidcxr.models import create_model
from covidcxr.models.classifier import CAM_LAYERS
from covidcxr.saliency import GradCam
from covidcxr.views import lung_share, to_image


@pytest.mark.parametrize("name", sorted(CAM_LAYERS))
def test_gradcam_every_backbone(name):
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=3).eval()
    maps = GradCam(model, name)(torch.randn(2, 1, 64, 64), [0, 2])
    assert maps.shape == (2, 64, 64)
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() in (0.0, 1.0) or np.isclose(m.max(), 1.0) for m in maps)
    assert not model.training  # eval mode restored


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_closed_form_gradcam_is_captums(name):
    """The map inference shows (one forward pass, no gradients) is captum's Grad-CAM of the same layer."""
    import torch.nn.functional as F
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=3).eval()
    for p in model.get_classifier().parameters():  # a trained-looking head, so the maps are not all zero
        torch.nn.init.normal_(p, std=1.0)
    x, targets = torch.randn(3, 1, 64, 64), [0, 1, 2]
    attr = LayerGradCam(model, model.get_submodule(CAM_LAYERS[name])).attribute(
        x.clone().requires_grad_(True), target=torch.tensor(targets), relu_attributions=True
    )
    ref = F.interpolate(attr.detach(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    ref = (ref / ref.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).numpy()
    np.testing.assert_allclose(GradCam(model, name)(x, targets), ref, atol=1e-4)


def test_gradcam_unknown_architecture():
    with pytest.raises(KeyError, match="Grad-CAM"):
        GradCam(create_model("resnet18", in_chans=1, num_classes=3), "vgg")


def test_to_image_and_lung_share():
    mask = np.zeros((200, 300), bool)
    mask[50:150, 60:240] = True
    heat = to_image(np.ones((32, 32), np.float32), mask, margin=0.1)
    assert heat.shape == mask.shape
    # all heat sits in the lung box grown by 10%: rows 40-160, columns 42-258
    assert heat[:40].sum() == 0 and heat[161:].sum() == 0 and heat[:, :41].sum() == 0
    assert heat[50:150, 60:240].min() > 0.99
    share = lung_share(heat, mask)
    assert 0.6 < share < 0.8  # the box margin holds the rest
    assert lung_share(np.where(mask, 1.0, 0.0), mask) == 1.0
    assert np.isnan(lung_share(np.zeros_like(heat), mask))


@pytest.mark.parametrize("name", sorted(CAM_LAYERS))
def test_lung_attention_penalty_reads_the_grad_cam_map(name):
    """The class-activation map that training penalises (losses.class_activation) is the Grad-CAM map, up to scale."""
    from captum.attr import LayerGradCam

    from covidcxr.engine.common.losses import class_activation, outside_lungs_share

    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=3).eval()
    for p in model.get_classifier().parameters():  # a trained-looking head, so the maps are not all zero
        torch.nn.init.normal_(p, std=1.0)
    x = torch.randn(2, 1, 96, 96)
    feats = []
    hook = model.get_submodule(CAM_LAYERS[name]).register_forward_hook(lambda m, i, o: feats.append(o))
    with torch.no_grad():
        model(x)
    hook.remove()
    weight = model.get_classifier().weight.detach()
    cam = class_activation(feats[0], weight)
    layer_cam = LayerGradCam(model, model.get_submodule(CAM_LAYERS[name]))
    grad_cam = torch.cat([layer_cam.attribute(x, target=c, relu_attributions=True).detach() for c in range(3)], 1)
    relu_cam = cam.detach().clamp_min(0) / (cam.shape[-1] * cam.shape[-2])
    assert float(grad_cam.max()) > 0
    assert torch.allclose(relu_cam, grad_cam, rtol=1e-3, atol=1e-6 * float(grad_cam.max()))
    everywhere, left = torch.ones(2, 1, 96, 96), torch.zeros(2, 1, 96, 96)
    left[..., :48] = 1
    assert float(outside_lungs_share(feats[0], weight, everywhere)) == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < float(outside_lungs_share(feats[0], weight, left)) < 1.0
    assert float(outside_lungs_share(feats[0], weight, torch.zeros(2, 1, 96, 96))) == pytest.approx(1.0, abs=1e-6)


def test_lung_share_never_exceeds_one_when_float32_sums_round():
    """A float32 map almost wholly inside the lungs: the subset sum may round above the total."""
    rng = np.random.default_rng(0)
    heat = rng.random((1024, 1024), dtype=np.float32)
    mask = np.ones(heat.shape, bool)
    mask[0, 0] = False
    assert 0.999 < lung_share(heat, mask) <= 1.0
